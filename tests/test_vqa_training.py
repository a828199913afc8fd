"""The VQA recipes of ``vitx train``: checkpoint, metadata and card of tiny runs, the image side taken from
shapes-vit, batches drawn by workers, the per-type scores, and bad input."""
import shutil
import sys
import types
from dataclasses import replace

import pytest
import torch

import vitx
from vitx.checkpoint import read_checkpoint
from vitx.cli import main
from vitx.data import ANSWERS, QUESTION_TYPES, shapes_vqa
from vitx.models import create_model
from vitx.training import RECIPES, train
from vitx.training import vqa as vqa_training
from vitx.training.draws import step_batches
from vitx.training.vqa import (answer_batch, answer_metrics, image_side_from, pool_batches, question_pool,
                               type_words)
from vitx.zoo import ZOO_DIR

QUESTIONS = 100  # test questions of the tiny runs (the recipes' 2,000 take ~20 s to draw)
FRESH = replace(RECIPES["shapes-vqa-single"], pool=0)   # a fresh batch every step
POOLED = replace(RECIPES["shapes-vqa-dual"], pool=24)   # a pool of 3 chunks of 8 (POOL_CHUNK patched)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """An output directory holding the zoo's shapes-vit, which both recipes start from."""
    out = tmp_path_factory.mktemp("zoo")
    shutil.copy(ZOO_DIR / "shapes-vit.safetensors", out)
    return out


@pytest.fixture(scope="module")
def trained(zoo):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vqa_training, "TEST_QUESTIONS", QUESTIONS)
        patch.setattr(vqa_training, "POOL_CHUNK", 8)
        single = train("shapes-vqa-single", zoo, seed=2, steps=3, batch_size=4, progress=False, recipe=FRESH)
        dual = train("shapes-vqa-dual", zoo, seed=1, steps=5, batch_size=6, progress=False, workers=2,
                     recipe=POOLED)
    return {"single": single, "dual": dual}


@pytest.mark.parametrize("streams", ["single", "dual"])
def test_tiny_run_writes_a_checkpoint_that_loads_and_scores_as_recorded(zoo, trained, streams):
    name, metrics = f"shapes-vqa-{streams}", trained[streams]
    state, meta = read_checkpoint(zoo / f"{name}.safetensors")
    assert meta["kind"] == "vqa" and meta["arch"] == f"vqa_shapes_{streams}" and meta["start"] == "shapes-vit"
    assert meta["class_names"] == list(ANSWERS) and meta["question_types"] == list(QUESTION_TYPES)
    assert meta["metrics"] == metrics and meta["test_seed"] == 10_000 + meta["seed"]
    assert list(metrics["types"]) == list(QUESTION_TYPES) and metrics["questions"] == QUESTIONS
    assert sum(t["n"] for t in metrics["types"].values()) == QUESTIONS
    assert [p["step"] for p in meta["train_curve"]] == list(range(1, meta["steps"] + 1))

    net = create_model(meta["arch"])
    net.load_state_dict(state)
    data = shapes_vqa(QUESTIONS, meta["test_seed"])
    with torch.no_grad():
        predicted = net.eval()((data.images - 0.5) / 0.25, data.input_ids, data.attention_mask).argmax(1)
    assert round((predicted == data.answers).float().mean().item(), 4) == metrics["accuracy"]
    for kind, m in metrics["types"].items():
        mine = data.types == QUESTION_TYPES.index(kind)
        right = (predicted == data.answers)[mine].float().mean().item()
        assert m["n"] == mine.sum() and m["accuracy"] == round(right, 4)


def test_zoo_rows_show_a_vqa_model_with_its_overall_accuracy(zoo, trained, monkeypatch):
    monkeypatch.setattr(vitx.zoo, "ZOO_DIR", zoo)
    rows = {row["name"]: row for row in vitx.models()}
    for streams, metrics in trained.items():
        row = rows[f"shapes-vqa-{streams}"]
        assert (row["kind"], row["architecture"], row["dataset"]) == ("vqa", f"vqa_shapes_{streams}", "shapes_vqa 64px")
        assert row["accuracy"] == metrics["accuracy"] and row["card"] == str(zoo / f"shapes-vqa-{streams}.md")


def test_card_states_command_start_and_results_per_type(zoo, trained):
    card = (zoo / "shapes-vqa-dual.md").read_text()
    metrics = trained["dual"]
    for fact in (f"vitx train shapes-vqa-dual --seed 1 --steps 5 --batch-size 6 --workers 2 --out {zoo}",
                 "A pool of 24 questions drawn once (chunk j of 8", "(1.2 passes)",
                 "Start: the image side of `shapes-vit`", "its 6 blocks as\n  `image_blocks`", "2 cross-modality layers",
                 f"{sum(p.numel() for p in create_model('vqa_shapes_dual').parameters()):,} parameters",
                 f"answer accuracy **{metrics['accuracy']:.3f}**", "does **not** meet issue 13's bar",
                 *(type_words(kind, m) for kind, m in metrics["types"].items()),
                 *(f"| {kind} | {m['accuracy']:.3f} | {m['n']} |" for kind, m in metrics["types"].items())):
        assert fact in card, fact
    single = (zoo / "shapes-vqa-single.md").read_text()
    assert "its 6 blocks as\n  `blocks`" in single and "A fresh batch of 4 questions at every step" in single


@pytest.mark.parametrize("streams, blocks", [("single", "blocks"), ("dual", "image_blocks")])
def test_image_side_starts_from_shapes_vit(streams, blocks):
    vit, _ = read_checkpoint(ZOO_DIR / "shapes-vit.safetensors")
    net = create_model(f"vqa_shapes_{streams}")
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    loaded = image_side_from(net, ZOO_DIR / "shapes-vit.safetensors")
    state = net.state_dict()
    assert torch.equal(state["image_pos"], vit["pos_embed"][:, 1:])
    stem = [k for k in vit if k.startswith("patch_embed.")]
    assert stem and all(torch.equal(state[k], vit[k]) for k in stem)
    body = [k for k in vit if k.startswith("blocks.")]
    assert len(body) == 6 * 12 and all(torch.equal(state[blocks + k[6:]], vit[k]) for k in body)
    assert sorted(loaded) == sorted(stem + ["image_pos"] + [blocks + k[6:] for k in body])
    assert all(torch.equal(state[k], fresh[k]) for k in state if k not in loaded)  # the rest starts afresh


def test_trained_image_side_stays_near_shapes_vit(zoo, trained):
    vit, _ = read_checkpoint(ZOO_DIR / "shapes-vit.safetensors")
    dual, _ = read_checkpoint(zoo / "shapes-vqa-dual.safetensors")
    weights = [k for k in vit if k.startswith("blocks.")]
    # five small AdamW steps move a weight by ~5e-3; a fresh start differs from shapes-vit's by ~0.1
    assert all(torch.allclose(dual["image_" + k], vit[k], atol=1e-2) for k in weights)
    fresh = create_model("vqa_shapes_dual").state_dict()
    assert not all(torch.allclose(fresh["image_" + k], vit[k], atol=1e-2) for k in weights)


def test_workers_draw_the_same_batches_in_order():
    seeds = [1_000_003, 1_000_001, 1_000_002]
    here = list(step_batches(answer_batch, seeds, 3, workers=0))
    ahead = list(step_batches(answer_batch, seeds, 3, workers=2))
    assert [d.seed for d in ahead] == seeds
    assert all(torch.equal(a.images, b.images) and a.questions == b.questions and torch.equal(a.answers, b.answers)
               for a, b in zip(here, ahead))


def test_workers_train_the_same_weights(zoo, trained, tmp_path, monkeypatch):
    shutil.copy(zoo / "shapes-vit.safetensors", tmp_path)
    monkeypatch.setattr(vqa_training, "TEST_QUESTIONS", QUESTIONS)
    assert train("shapes-vqa-single", tmp_path, seed=2, steps=3, batch_size=4, progress=False, workers=2,
                 recipe=FRESH) == trained["single"]
    here, _ = read_checkpoint(zoo / "shapes-vqa-single.safetensors")
    ahead, _ = read_checkpoint(tmp_path / "shapes-vqa-single.safetensors")
    assert all(torch.equal(here[k], ahead[k]) for k in here)


def test_pool_is_the_training_chunks_cached_and_sampled_in_epochs(tmp_path, monkeypatch):
    monkeypatch.setattr(vqa_training, "POOL_CHUNK", 4)
    pool = question_pool(10, seed=3, workers=2, cache=tmp_path)
    chunks = [shapes_vqa(4, 4_000_000 + j) for j in range(3)]
    assert torch.equal(pool["answers"], torch.cat([c.answers for c in chunks])[:10])
    assert torch.equal(pool["images"], torch.cat([c.images for c in chunks])[:10].half())
    cached = list(tmp_path.iterdir())
    assert [p.name for p in cached] == ["shapes_vqa-pool-3-10.pt"]
    monkeypatch.setattr(vqa_training, "step_batches", None)  # a second run reads the cache and draws nothing
    again = question_pool(10, seed=3, workers=0, cache=tmp_path)
    assert all(torch.equal(again[k], pool[k]) for k in pool)

    batches = list(pool_batches(pool, batch_size=3, steps=7, seed=0, device="cpu"))
    assert len(batches) == 7 and all(len(b.answers) == 3 for b in batches)
    for epoch in range(2):  # 3 batches an epoch, the 10th item left out: no item twice within an epoch
        seen = torch.cat([b.images for b in batches[epoch * 3:epoch * 3 + 3]]).flatten(1)
        assert len({tuple(row.tolist()) for row in seen}) == 9
    assert not torch.equal(batches[0].answers, batches[3].answers) or not torch.equal(batches[0].images,
                                                                                      batches[3].images)


def test_answer_metrics_count_confusions_per_type():
    index = {name: i for i, name in enumerate(ANSWERS)}
    kinds = [QUESTION_TYPES.index(k) for k in ("counting",) * 5 + ("existence",) * 2]
    answers = [index[a] for a in ("3", "3", "3", "4", "2", "yes", "no")]
    predicted = [index[a] for a in ("4", "4", "3", "3", "red", "yes", "no")]
    metrics = answer_metrics(torch.tensor(predicted), torch.tensor(answers), torch.tensor(kinds))
    counting = metrics["types"]["counting"]
    assert metrics["accuracy"] == round(3 / 7, 4) and metrics["questions"] == 7
    assert counting == {"accuracy": 0.2, "n": 5, "confusions": [["3", "4", 2], ["4", "3", 1], ["2", "red", 1]],
                        "outside_type": 1}
    assert metrics["types"]["existence"] == {"accuracy": 1.0, "n": 2, "confusions": [], "outside_type": 0}
    assert type_words("counting", counting) == (
        '- **counting**: 1 of 5 right (20.0%). Commonest mistakes: "4" for "3" (2x), "3" for "4" (1x), "red" for "2" '
        "(1x) (together 100% of its 4 mistakes); 1 answers were not among the type's answers.")


def test_cli_forwards_workers_and_device(monkeypatch, tmp_path, capsys):
    calls = []
    fake = types.ModuleType("vitx.training")
    fake.train = lambda name, **options: calls.append((name, options)) or {
        "accuracy": 0.9, "questions": 5, "types": {"counting": {"accuracy": 0.8}}}
    monkeypatch.setitem(sys.modules, "vitx.training", fake)
    assert main(["train", "shapes-vqa-dual", "--workers", "3", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert calls == [("shapes-vqa-dual", {"out_dir": tmp_path, "workers": 3, "device": "cpu"})]
    assert "accuracy 0.9, questions 5, counting accuracy 0.8" in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    ({"workers": -1}, "workers must be an integer >= 0, got -1"),
    ({"workers": 1.5}, "workers must be an integer >= 0"),
    ({"device": "gpu"}, "unknown device 'gpu'"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, options, message):
    with pytest.raises(vitx.VitxError, match=message):
        train("shapes-vqa-single", tmp_path / "out", steps=1, **options)
    assert not list(tmp_path.iterdir())


def test_bad_input_is_one_line_from_the_cli(tmp_path, capsys):
    for args, message in ((["shapes-vqa-triple"], "no training recipe named 'shapes-vqa-triple'"),
                          (["shapes-vqa-dual", "--workers", "-2"], "workers must be an integer >= 0, got -2"),
                          (["shapes-vqa-dual"], "train shapes-vit first")):
        assert main(["train", *args, "--steps", "1", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(vitx.VitxError, match="'shapes-vit' trains on the CPU only"):
        train("shapes-vit", tmp_path / "out", steps=1, device="cuda")
    assert not list(tmp_path.iterdir())
