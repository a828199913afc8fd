"""``vitx bench`` on image-text (CLIP-like) models: the metrics on hand-made maps, masks and words; image tokens dropped
through the tap equal the image tower run on the kept tokens alone, written out by hand; the evaluation and the
command end to end on an untrained net; mismatched data refused in one line."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import vitx
from vitx.checkpoint import save_checkpoint
from vitx.cli import main
from vitx.data import shapes, shapes_captions
from vitx.data.shapes import CLASS_NAMES
from vitx.data.shapes_vqa import COLOUR_NAMES
from vitx.errors import VitxError
from vitx.evaluate import evaluate
from vitx.evaluate_prompts import _naming_words, prompt_rows
from vitx.metrics import IMAGE_TEXT_METRICS, naming_precision, object_grounding, similarity_deletion_insertion
from vitx.models import create_model

SEED = 40_000  # fresh images: training uses data seeds >= 1,000,000
MEAN, STD = (0.5,) * 3, (0.25,) * 3


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return vitx.model.wrap(create_model("clip_shapes", image_layers=2, text_layers=1).eval(), mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def data():
    return shapes_captions(3, seed=SEED)


def square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


# ---- ground truth on the image ----------------------------------------------------------------------------------

def test_pointing_energy_and_class_sensitivity_on_hand_made_maps():
    a, b = square(16, 2, 2, 4), square(16, 10, 10, 4)       # A: rows/cols 2-5, B: 10-13
    maps = torch.zeros(4, 16, 16)
    maps[0, 3, 3] = 1.0                                      # the peak inside A
    maps[1, 3, 7] = 1.0                                      # 2 px right of A: beyond 15/224 · 16 = 1.07 px
    maps[1, 4, 4] = 0.5                                      # A still gets more than B
    maps[2, 3, 6] = 1.0                                      # 1 px right of A: within the tolerance
    maps[2, 11, 11] = 3.0                                    # ... and yet the peak is in B: a miss
    maps[3] = -1.0                                           # no positive relevance at all
    maps[3, 12, 12] = -0.5                                   # B gets more (less negative) than A
    out = object_grounding(maps, a.expand(4, -1, -1), b.expand(4, -1, -1))
    assert out["pointing_game"].tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(out["energy"], torch.tensor([1.0, 0.5 / 1.5, 0.0, 0.0]))
    assert out["class_sensitivity"].tolist() == [1.0, 1.0, 0.0, 0.0]
    maps[2, 11, 11] = 0.0                                    # now the peak is the pixel 1 px off A: a tolerant hit
    assert object_grounding(maps[2:3], a[None], b[None])["pointing_game"].item() == 1.0
    assert object_grounding(torch.ones(1, 16, 16), a[None], b[None])["class_sensitivity"].item() == 0.0  # a tie fails


def test_the_pointing_tolerance_scales_with_the_image():
    a, b = square(64, 20, 20, 8), square(64, 50, 50, 8)      # 15/224 · 64 = 4.3 px at 64
    maps = torch.zeros(2, 64, 64)
    maps[0, 22, 31] = 1.0                                    # 4 px right of A's last column (27): a hit
    maps[1, 22, 32] = 1.0                                    # 5 px: a miss
    assert object_grounding(maps, a.expand(2, -1, -1), b.expand(2, -1, -1))["pointing_game"].tolist() == [1.0, 0.0]


# ---- the naming words ------------------------------------------------------------------------------------------

def test_naming_words_precision_counts_the_naming_words_among_the_top_words():
    # [CLS] a red star [SEP] [PAD]: the naming words are columns 2 and 3
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]] * 4, dtype=torch.bool)
    naming = torch.tensor([[0, 0, 1, 1, 0, 0]] * 4, dtype=torch.bool)
    maps = torch.tensor([[9.0, 0.1, 0.5, 0.7, 9.0, 9.0],     # [CLS], [SEP] and padding high: not words, ignored
                         [0.0, 0.9, 0.5, 0.1, 0.0, 0.0],     # "a" first: one naming word among the top two
                         [0.0, 0.3, 0.3, 0.3, 0.0, 0.0],     # all tied: 2/3 in expectation
                         [0.0, 0.2, 0.2, 0.9, 0.0, 0.0]])    # "a" and "red" tied for second: 1/2 + 1/2 · 1/2
    torch.testing.assert_close(naming_precision(maps, naming, mask), torch.tensor([1.0, 0.5, 2 / 3, 0.75]))
    assert naming_precision(None, naming, mask).isnan().all()   # a method without a text map: left out
    with pytest.raises(VitxError, match="prompt 1 has no word naming its object"):
        naming_precision(maps, naming & torch.tensor([[1], [0], [1], [1]], dtype=torch.bool), mask)
    with pytest.raises(VitxError, match="must all be"):
        naming_precision(maps[:, :4], naming, mask)


def test_pairs_name_the_first_two_objects_of_each_image(clip, data):
    images, prompts, slots = prompt_rows(data)
    assert images.tolist() == [0, 0, 1, 1, 2, 2]
    assert slots.tolist() == [[0, 1], [1, 0]] * 3
    for row, (i, (own, _)) in enumerate(zip(images.tolist(), slots.tolist())):
        shape, colour = int(data.object_shapes[i, own]), int(data.object_colours[i, own])
        assert prompts[row] == f"a {COLOUR_NAMES[colour]} {CLASS_NAMES[shape]}" == data.phrases(i)[own]
    text = clip.encode_text(prompts)
    naming = _naming_words(data, images, slots[:, 0], text)                # [CLS] a <colour> <shape> [SEP]
    assert naming.nonzero()[:, 1].view(-1, 2).tolist() == [[2, 3]] * 6


# ---- deletion and insertion of image tokens ---------------------------------------------------------------------

def by_hand(net, x, ids, mask, kept: list[int]) -> torch.Tensor:
    """s(x, t) with the image tower run on its class token and the patches ``kept`` alone (models/vit.py and
    models/clip.py written out on the shorter sequence)."""
    v = net.visual
    patches = v.patch_embed(x).flatten(2).transpose(1, 2) + v.pos_embed[:, 1:]
    tokens = torch.cat([v.cls_token.expand(x.shape[0], -1, -1) + v.pos_embed[:, :1], patches[:, kept]], 1)
    image = v.head(v.norm(v.blocks(tokens))[:, 0])
    text = net.text_features(ids, mask)
    return net.logit_scale.exp() * F.cosine_similarity(image, text, dim=-1)


def test_deletion_and_insertion_drop_image_tokens_as_a_shorter_sequence(clip, data):
    x = clip.normalize(data.images[:2])
    text = clip.encode_text(data.phrases(0)[:1] + data.phrases(1)[:1])
    scores = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(k)).float() for k in range(2)])
    out = similarity_deletion_insertion(clip, x, text, scores, 1, steps=4)   # chunks of 1: the text sliced along
    assert out["fractions"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    order = scores.argsort(1, descending=True)
    with torch.no_grad():
        for step, k in enumerate(range(0, 65, 16)):
            for r in range(2):
                first = sorted(order[r, :k].tolist())
                rest = sorted(order[r, k:].tolist())
                args = (clip.net, x[r:r + 1], text.ids[r:r + 1], text.mask[r:r + 1])
                torch.testing.assert_close(out["deletion"][r, step], by_hand(*args, rest)[0], rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(out["insertion"][r, step], by_hand(*args, first)[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["deletion_auc"], torch.trapezoid(out["deletion"], dx=0.25, dim=1))
    assert not torch.allclose(out["deletion"][:, 0], out["deletion"][:, 2])   # the dropped tokens mattered


def test_deletion_refuses_what_it_cannot_score(clip, data):
    x = clip.normalize(data.images[:2])
    text = clip.encode_text(["a red star", "a blue circle"])
    with pytest.raises(VitxError, match="the 64 patches of each of the 2 images"):
        similarity_deletion_insertion(clip, x, text, torch.zeros(2, 63))
    with pytest.raises(VitxError, match="one per image; got 1 for 2"):
        similarity_deletion_insertion(clip, x, text[:1], torch.zeros(2, 64))
    with pytest.raises(VitxError, match="steps must be an integer from 1 to 64"):
        similarity_deletion_insertion(clip, x, text, torch.zeros(2, 64), steps=0)


# ---- the evaluation end to end ----------------------------------------------------------------------------------

def test_evaluation_on_an_untrained_net(clip, data):
    methods = ["generic-attention", "gradcam", "random", "ground-truth"]
    ev = evaluate(clip, data, methods, gallery=3)
    results = ev.results
    assert results["variant"] == "clip" and results["explanations"] == 6 and results["n"] == 3
    assert list(results["methods"]) == methods
    for name, row in results["methods"].items():
        assert "error" not in row, row
        assert set(IMAGE_TEXT_METRICS) <= set(row), name
    truth = results["methods"]["ground-truth"]
    for metric in ("prompt_pointing_game", "prompt_energy", "prompt_class_sensitivity", "naming_words_precision"):
        assert truth[metric] == pytest.approx(1.0), metric
    assert results["methods"]["gradcam"]["naming_words_precision"] is None       # no text map: n/a
    assert 0 <= results["methods"]["generic-attention"]["naming_words_precision"] <= 1
    assert set(ev.curves["random"]) == {"similarity, image tokens deleted", "similarity, image tokens inserted"}
    assert len(ev.curves["random"]["similarity, image tokens deleted"]["x"]) == 9     # a row of 8 tokens per step
    assert ev.gallery["generic-attention"].shape == (3, 64, 64) and ev.images.shape == (3, 3, 64, 64)
    images, prompts, _ = prompt_rows(data)
    exp = vitx.explain(clip, clip.normalize(data.images[images[:2]]), "generic-attention", text=prompts[:2],
                       target=[0, 1])
    torch.testing.assert_close(ev.gallery["generic-attention"][:2], exp.maps, rtol=1e-4, atol=1e-5)  # its own prompt
    again = evaluate(clip, data, ["gradcam"], previous=ev)                # a resumed run lends the earlier row
    assert again.results["methods"]["gradcam"] == results["methods"]["gradcam"]


def test_mismatched_data_and_metrics_are_refused(clip, data):
    with pytest.raises(VitxError, match="evaluate it on vitx.data.shapes_captions"):
        evaluate(clip, shapes(n=2, seed=SEED), ["random"])
    torch.manual_seed(0)
    vit = vitx.model.wrap(create_model("vitx_shapes", depth=1).eval())
    with pytest.raises(VitxError, match="shapes_captions images are for image-text models"):
        evaluate(vit, data, ["random"])
    with pytest.raises(VitxError, match="unknown metric 'miou' for \\(image, prompt\\) pairs"):
        evaluate(clip, data, ["random"], metrics=["miou"])


def test_bench_command_writes_the_leaderboard(clip, tmp_path, capsys):
    path = tmp_path / "clip.safetensors"
    save_checkpoint(clip.net, path, {"arch": "clip_shapes", "config": {"image_layers": 2, "text_layers": 1},
                                     "mean": list(MEAN), "std": list(STD)})
    out = tmp_path / "bench"
    code = main(["bench", "--model", str(path), "--methods", "saliency,random,ground-truth", "--n", "2", "--seed",
                 str(SEED), "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert {"results.json", "results.csv", "leaderboard.md", "gallery.png", "report.html",
            "curve_similarity_image_tokens_deleted.png"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert results["variant"] == "clip" and results["explanations"] == 4 and "--sanity-images" not in results["command"]
    board = (out / "leaderboard.md").read_text()
    assert "2 shapes_captions images" in board and "naming_words_precision ↑" in board
    assert "similarity_deletion_auc ↓" in board and "| pairs/s |" in board and "| saliency |" in stdout
