"""``vitx bench`` on bi-modal (VQA) models: Chefer et al.'s perturbation tests delete tokens (checked against
forwards built by hand), keep the authors' counts per step and order, integrate a known curve; the ground-truth
scores on hand-made maps; the command on untrained nets; bad input refused in one line."""
from __future__ import annotations

import json

import pytest
import torch

import vitx
from vitx.cli import benching, main
from vitx.data import shapes, shapes_vqa
from vitx.errors import VitxError
from vitx.evaluate import evaluate
from vitx.metrics import BIMODAL_METRICS, IMAGE_STEPS, TEXT_STEPS, image_grounding, perturbation_bimodal, text_grounding
from vitx.models import create_model

SEED = 30_000  # fresh questions: training uses data seeds >= 1,000,000


def untrained(arch: str):
    torch.manual_seed(0)
    return vitx.model.wrap(create_model(arch)).eval()


@pytest.fixture(scope="module", params=["vqa_shapes_single", "vqa_shapes_dual"])
def model(request):
    return untrained(request.param)


@pytest.fixture(scope="module")
def data():
    return shapes_vqa(n=6, seed=SEED)


def by_hand(net, images, ids, mask, kept):
    """The answer logits of the image's ``kept`` patches alone, the question ``ids`` / ``mask``: the forward of
    models/vqa.py written out on the shorter sequence."""
    t = net.embed_text(ids)
    i = (net.patch_embed(images).flatten(2).transpose(1, 2) + net.image_pos)[:, kept]
    padding = mask.bool()
    if net.cfg.streams == "single":
        x = torch.cat([t + net.type_embed[0], i + net.type_embed[1]], 1)
        joint = torch.cat([padding, padding.new_ones(i.shape[:2])], 1)
        for block in net.blocks:
            x = block(x, joint)
        return net.head(net.norm(x[:, 0]))
    for block in net.text_blocks:
        t = block(t, padding)
    for block in net.image_blocks:
        i = block(i)
    for layer in net.cross_layers:
        t, i = layer(t, i, padding)
    return net.head(net.norm(t[:, 0]))


@pytest.mark.parametrize("kept", [[0, 5, 9, 63], [17], []])
def test_image_deletion_is_a_shorter_sequence(model, data, kept):
    x, text = model.normalize(data.images[:2]), model.encode_text(list(data.questions[:2]))
    keep = torch.tensor([kept, kept], dtype=torch.long).view(2, len(kept))
    with torch.no_grad():
        ours = model(x, text, keep=keep)
        theirs = by_hand(model.net, x, text.ids, text.mask, kept)
        whole = model(x, text)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, whole)  # the deleted patches mattered


def test_text_deletion_is_the_shorter_question(model):
    text = model.encode_text(["is there a red star?", "what colour is the object left of the star?"])
    x = model.normalize(shapes_vqa(n=2, seed=SEED).images)
    kept = text.mask.clone()
    kept[0, 4] = False                          # "red"
    kept[1, [4, 5, 6]] = False                  # "the object left"
    shorter = model.encode_text(["is there a star?", "what colour is of the star?"])
    with torch.no_grad():
        torch.testing.assert_close(model(x, text.keep(kept)), model(x, shorter), rtol=1e-5, atol=1e-6)


class Spy:
    """Stands in for the adapter's forward: records each call's kept patches and question ids, and answers with
    ``answer(kept patches, kept words)`` per pair (the model's own forward otherwise)."""

    def __init__(self, model, answer=None):
        self.model, self.answer, self.calls = model, answer, []
        self.forward = model.adapter.forward

    def __call__(self, x, text, keep=None):
        self.calls.append((None if keep is None else keep.clone(), text.ids.clone(), text.mask.clone()))
        logits = self.forward(x, text, keep)
        if self.answer is None:
            return logits
        patches = torch.full((x.shape[0],), 64 if keep is None else keep.shape[1])
        right = self.answer(patches, text.mask.sum(1) - 2)
        return torch.where(right[:, None], torch.nn.functional.one_hot(self.truth, logits.shape[1]).float(), 0.0)


def spied(monkeypatch, model, answer=None, truth=None):
    spy = Spy(model, answer)
    spy.truth = truth
    monkeypatch.setattr(model.adapter, "forward", spy)
    return spy


@pytest.mark.parametrize("order", ["positive", "negative"])
def test_image_steps_keep_the_authors_counts_in_order(monkeypatch, order):
    model = untrained("vqa_shapes_dual")
    d = shapes_vqa(n=3, seed=SEED)
    x, text = model.normalize(d.images), model.encode_text(list(d.questions))
    scores = torch.arange(64.0).expand(3, 64)  # patch j has relevance j
    spy = spied(monkeypatch, model)
    out = perturbation_bimodal(model, x, text, d.answers, scores, batch_size=8, modality="image", order=order)
    assert len(spy.calls) == len(IMAGE_STEPS)       # one forward per step for the whole chunk
    counts = [64 if keep is None else keep.shape[1] for keep, _, _ in spy.calls]
    assert counts == [64, 32, 16, 3, 2, 1, 1, 0, 0] == [int((1 - s) * 64) for s in IMAGE_STEPS]
    for (keep, _, _), k in zip(spy.calls[1:], counts[1:]):
        # positive removes the most relevant patches first: the k least relevant stay; negative the opposite
        expected = list(range(k)) if order == "positive" else list(range(64 - k, 64))
        assert keep.tolist() == [expected] * 3
    assert out["correct"].shape == (3, 9) and out["fractions"].tolist() == pytest.approx(IMAGE_STEPS)


@pytest.mark.parametrize("order", ["positive", "negative"])
def test_text_steps_keep_cls_sep_and_the_authors_counts(monkeypatch, order):
    model = untrained("vqa_shapes_single")
    questions = ["what colour is the object left of the star?", "is there a red star?"]   # 10 and 6 words
    x, text = model.normalize(shapes_vqa(n=2, seed=SEED).images), model.encode_text(questions)
    scores = torch.arange(12.0).expand(2, 12) * text.mask    # word j has relevance j
    spy = spied(monkeypatch, model)
    perturbation_bimodal(model, x, text, torch.tensor([0, 0]), scores, modality="text", order=order)
    assert len(spy.calls) == len(TEXT_STEPS)
    for (_, ids, mask), step in zip(spy.calls, TEXT_STEPS):
        for row, words in enumerate((10, 6)):
            k = int((1 - step) * words)
            kept = ids[row][mask[row]].tolist()
            assert kept[0] == text.ids[row, 0] and kept[-1] == text.ids[row, words + 1]   # [CLS], [SEP]
            columns = list(range(1, k + 1)) if order == "positive" else list(range(words - k + 1, words + 1))
            assert kept[1:-1] == text.ids[row, columns].tolist()                          # in their order
    words = [int((1 - s) * 6) for s in TEXT_STEPS]
    assert words == [6, 4, 3, 1, 1, 0, 0, 0, 0]


def test_auc_of_a_known_curve(monkeypatch):
    """Answers right while at least 16 patches (or 3 words) stay: accuracy 1, 1, 1, 0, ... over the steps."""
    model = untrained("vqa_shapes_dual")
    d = shapes_vqa(n=2, seed=SEED)
    x, text = model.normalize(d.images), model.encode_text(["is there a red star?", "is there a red star?"])
    truth = torch.tensor([1, 4])
    spied(monkeypatch, model, answer=lambda patches, words: (patches >= 16) & (words >= 3), truth=truth)
    image = perturbation_bimodal(model, x, text, truth, torch.rand(2, 64), modality="image")
    assert image["correct"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0]] * 2
    # trapezoids: 0.5 x 1 + 0.25 x 1 + 0.2 x (1 + 0) / 2 = 0.85
    assert image["auc"].tolist() == pytest.approx([85.0, 85.0])
    text_run = perturbation_bimodal(model, x, text, truth, torch.rand(2, 12), modality="text")
    assert text_run["correct"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0]] * 2   # 6, 4, 3, 1 ... words
    assert text_run["auc"].tolist() == pytest.approx([62.5, 62.5])           # 0.25 + 0.25 + 0.25 / 2


def test_text_rank_and_top_word_on_hand_made_maps():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]] * 4, dtype=torch.bool)   # [CLS] w1 w2 w3 [SEP] pad
    gt = torch.tensor([[0, 0, 1, 0, 0, 0]] * 3 + [[0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    maps = torch.tensor([[9.0, 0.5, 0.3, 0.1, 9.0, 0.0],     # w1 above the ground truth: rank 2, miss
                         [0.0, 0.2, 0.7, 0.1, 0.0, 0.0],     # the ground truth on top
                         [0.0, 0.4, 0.4, 0.4, 0.0, 0.0],     # three-way tie: rank (1 + 2 + 1) / 2, hit 1/3
                         [0.0, 0.4, 0.2, 0.1, 0.0, 0.0]])    # no ground-truth word: undefined
    out = text_grounding(maps, gt, mask)
    assert out["rank"][:3].tolist() == pytest.approx([2.0, 1.0, 2.0])
    assert out["top1"][:3].tolist() == pytest.approx([0.0, 1.0, 1 / 3])
    assert out["rank"][3].isnan() and out["top1"][3].isnan()


def test_pointing_and_energy_on_hand_made_maps():
    masks = torch.zeros(4, 64, 64, dtype=torch.bool)
    masks[:3, 20:30, 20:30] = True                 # the last pair has no ground-truth object
    maps = torch.zeros(4, 64, 64)
    maps[0, 25, 25] = 1.0                          # inside
    maps[1, 25, 33] = 1.0                          # 4 px right of the mask: within 15/224 x 64 = 4.3 px
    maps[2, 25, 40] = 1.0                          # 11 px away
    maps[2, 22, 22] = 1.0 / 3                      # a quarter of the positive mass inside
    out = image_grounding(maps, masks)
    assert out["pointing_game"][:3].tolist() == [1.0, 1.0, 0.0]
    assert out["energy"][:3].tolist() == pytest.approx([1.0, 0.0, 0.25])
    assert out["pointing_game"][3].isnan() and out["energy"][3].isnan()


def test_evaluate_scores_both_modalities_on_an_untrained_net():
    model = untrained("vqa_shapes_dual")
    data = shapes_vqa(n=24, seed=SEED)
    evaluation = evaluate(model, data, ["generic-attention", "random", "ground-truth"], batch_size=16, gallery=2)
    results = evaluation.results
    left_out = int((~data.gt_masks.flatten(1).any(1)).sum())
    assert left_out > 0 and results["image_left_out"] == left_out
    for name, row in results["methods"].items():
        assert set(BIMODAL_METRICS) <= set(row), (name, row)
    oracle = results["methods"]["ground-truth"]
    assert [oracle[m] for m in ("image_pointing_game", "image_energy", "text_top1", "text_rank")] == [1, 1, 1, 1]
    assert set(evaluation.curves["generic-attention"]) == {"image perturbation positive", "image perturbation negative",
                                                           "text perturbation positive", "text perturbation negative"}
    assert evaluation.gallery["generic-attention"].shape == (2, 64, 64) and len(evaluation.questions) == 2


def test_bench_command_on_an_untrained_net_writes_its_table(tmp_path, monkeypatch, capsys):
    model = untrained("vqa_shapes_single")
    monkeypatch.setattr(benching, "load_model", lambda *args, **kwargs: model)
    out = tmp_path / "bench"
    argv = ["bench", "--model", "shapes-vqa-single", "--methods", "generic-attention,random,ground-truth", "--n", "8",
            "--seed", str(SEED), "--batch-size", "8", "--out", str(out)]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    board = (out / "leaderboard.md").read_text()
    assert board.startswith(f"`vitx bench --model shapes-vqa-single --methods generic-attention,random,ground-truth "
                            f"--n 8 --seed {SEED} --out {out}`")
    header = next(line for line in board.splitlines() if line.startswith("| method"))
    assert [cell.split()[0] for cell in header.strip("| ").split(" | ")][1:-1] == list(BIMODAL_METRICS)
    rows = [line.split(" | ")[0] for line in board.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| method", "| generic-attention", "| random (reference)", "| ground-truth (reference)"]
    results = json.loads((out / "results.json").read_text())
    assert results["variant"] == "vqa" and results["n"] == 8 and 0 <= results["accuracy"] <= 1
    for name in ("gallery.png", "report.html", "curve_image_perturbation_positive.png",
                 "curve_text_perturbation_negative.png"):
        assert (out / name).stat().st_size > 0
    argv += ["--resume"]
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"] == results["methods"]   # rows reused, timings included: nothing was scored again


def test_bench_command_on_a_checkpoint_file(tmp_path, capsys):
    from vitx.checkpoint import save_checkpoint
    path = save_checkpoint(untrained("vqa_shapes_dual").net, tmp_path / "dual.safetensors", {"arch": "vqa_shapes_dual"})
    code = main(["bench", "--model", str(path), "--methods", "generic-attention", "--n", "4", "--out",
                 str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "leaderboard.md").exists()


def one_line_error(call) -> str:
    with pytest.raises(VitxError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_input_is_one_line():
    vqa, vit = untrained("vqa_shapes_dual"), vitx.model.wrap(create_model("vitx_shapes")).eval()
    assert "shapes_vqa" in one_line_error(lambda: evaluate(vqa, shapes(n=2, seed=SEED)))
    assert "reads images only" in one_line_error(lambda: evaluate(vit, shapes_vqa(n=2, seed=SEED)))
    assert "unknown metric 'pointing_game'" in one_line_error(
        lambda: evaluate(vqa, shapes_vqa(n=2, seed=SEED), ["random"], ["pointing_game"]))
    x, text = vqa.normalize(shapes_vqa(n=2, seed=SEED).images), vqa.encode_text(["is there a red star?"] * 2)
    assert "modality" in one_line_error(lambda: perturbation_bimodal(vqa, x, text, [0, 0], torch.rand(2, 64),
                                                                     modality="audio"))
    assert "patches" in one_line_error(lambda: perturbation_bimodal(vqa, x, text, [0, 0], torch.rand(2, 10)))
    assert "steps" in one_line_error(lambda: perturbation_bimodal(vqa, x, text, [0, 0], torch.rand(2, 64),
                                                                  steps=[0.5, 0.2]))
