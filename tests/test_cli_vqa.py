"""`vitx explain --text` on bi-modal (VQA) models: the files written, the answer and its probability in the pictures'
labels, the question's words coloured in the text map's order (overlay, grid and page), a VQA checkpoint loaded by
path, and every bad question refused in one line with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps

import vitx
import vitx.explanation
from vitx.checkpoint import save_checkpoint
from vitx.cli import applicable_methods, main
from vitx.data.shapes_vqa import ANSWERS
from vitx.errors import VitxError
from vitx.models import create_model
from vitx.viz import answer_lines, grid, prediction_label, probability
from vitx.viz.words import SPECIAL, place_words, word_colours

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
CIRCLE, STAR = SAMPLES / "1_circle.png", SAMPLES / "18_star.png"
QUESTIONS = ["what colour is the star?", "is there a red circle?"]
METHOD = "generic-attention"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Untrained VQA transformers (one and two streams) and a small image-only ViT, saved as vitx checkpoints."""
    d = tmp_path_factory.mktemp("vqa")
    for streams in ("single", "dual"):
        arch = f"vqa_shapes_{streams}"
        torch.manual_seed(0)
        save_checkpoint(create_model(arch), d / f"{streams}.safetensors",
                        {"arch": arch, "mean": [0.5] * 3, "std": [0.25] * 3})
    save_checkpoint(create_model("vitx_shapes", depth=2), d / "vit.safetensors",
                    {"arch": "vitx_shapes", "config": {"depth": 2}})
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def expected_colours(tokens, relevance) -> list:
    """The test's own reading of the rule: words min-max scaled among themselves, jet, half over white."""
    words = [k for k, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]", "[PAD]")]
    values = np.asarray(relevance, np.float64)[words]
    span = values.max() - values.min()
    levels = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    colours = [None] * len(tokens)
    for k, level in zip(words, levels):
        colours[k] = tuple(0.5 + 0.5 * np.asarray(colormaps["jet"](level)[:3]))
    return colours


def test_a_vqa_checkpoint_loads_by_path_with_its_answers(files):
    model = vitx.load_model(files / "dual.safetensors")
    assert model.bimodal and model.config.kind == "vqa" and model.config.class_names == ANSWERS
    assert model.config.mean == (0.5, 0.5, 0.5)
    torch.manual_seed(0)
    net = create_model("vqa_shapes_dual")   # the same seed: the same weights as the file
    x, text = torch.randn(2, 3, 64, 64), model.encode_text(QUESTIONS)
    assert torch.allclose(model(x, text), net.eval()(x, text.ids, text.mask), atol=1e-6)


@pytest.mark.parametrize("streams", ["single", "dual"])
def test_explain_with_text_writes_overlays_maps_text_maps_grid_and_page(streams, files, tmp_path, capsys, monkeypatch):
    drawn = []   # (tokens, colours, lines) of every overlay's caption: per method, per image
    captioned = vitx.explanation.captioned
    monkeypatch.setattr(vitx.explanation, "captioned", lambda picture, tokens, colours, lines:
                        drawn.append((tokens, colours, lines)) or captioned(picture, tokens, colours, lines))
    out = tmp_path / "o"
    path = files / f"{streams}.safetensors"
    model = vitx.load_model(path)
    x = model.preprocess([STAR, CIRCLE])
    methods = [info.name for info in applicable_methods(model, model.layout(x))]
    assert METHOD in methods
    code, stdout, stderr = run(capsys, "explain", STAR, CIRCLE, "--model", path, "--method", "all",
                               "--text", QUESTIONS[0], "--text", QUESTIONS[1], "--out", out)
    assert code == 0, stderr
    n = 2 * len(methods)
    assert f"wrote {n} overlays (<image>_<method>.png), {n} maps (.npy) and {n} text maps (_text.json)" in stdout

    exp = vitx.explain(model, [STAR, CIRCLE], text=QUESTIONS, method=METHOD)
    with torch.no_grad():
        probs = model(x, model.encode_text(QUESTIONS)).softmax(-1)
    names = ("18_star", "1_circle")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}_{method}{end}" for method in methods for name in names for end in (".png", ".npy", "_text.json")]
        + ["grid.png", "index.html"])
    page = (out / "index.html").read_text()
    jet = colormaps["jet"](np.linspace(0, 1, 1001))[:, :3]
    for i, name in enumerate(names):
        np.testing.assert_allclose(np.load(out / f"{name}_{METHOD}.npy"), exp.maps[i].numpy(), atol=1e-5)
        saved = json.loads((out / f"{name}_{METHOD}_text.json").read_text())
        assert saved["tokens"] == list(model.encode_text(QUESTIONS[i]).tokens[0])
        assert saved["tokens"][0] == "[CLS]" and saved["tokens"][-1] == "[SEP]"
        np.testing.assert_allclose(saved["relevance"], exp.text_maps[i, :len(saved["tokens"])].numpy(), atol=1e-5)
        k = int(probs[i].argmax())
        answer = f"answer: {ANSWERS[k]} ({probability(float(probs[i, k]))})"   # softmax of the model's own logits
        assert f"<td>{QUESTIONS[i]}</td><td>{answer}</td>" in page   # the question and answer once per image
        for m, method in enumerate(methods):
            saved = json.loads((out / f"{name}_{method}_text.json").read_text())
            tokens, colours, lines = drawn[2 * m + i]
            assert tokens == tuple(saved["tokens"]) and lines == [answer]
            assert [c is None for c in colours] == [t in SPECIAL for t in tokens]
            np.testing.assert_allclose([c for c in colours if c],
                                       [c for c in expected_colours(tokens, saved["relevance"]) if c], atol=1e-4)
            words = [k for k, t in enumerate(tokens) if t not in SPECIAL]
            order = sorted(words, key=lambda k: saved["relevance"][k])   # the colours order the words as the text map
            positions = [int(np.abs(0.5 + 0.5 * jet - np.asarray(colours[k])).sum(1).argmin()) for k in order]
            assert positions == sorted(positions)
            assert page.count(f"src=\"{name}_{method}.png\"") == 1


def test_a_given_answer_is_explained_and_labelled_beside_the_predicted_one(files, tmp_path, capsys, monkeypatch):
    drawn = []
    captioned = vitx.explanation.captioned
    monkeypatch.setattr(vitx.explanation, "captioned", lambda picture, tokens, colours, lines:
                        drawn.append(lines) or captioned(picture, tokens, colours, lines))
    path = files / "dual.safetensors"
    model = vitx.load_model(path)
    with torch.no_grad():
        probs = model(model.preprocess([STAR]), model.encode_text(QUESTIONS[:1])).softmax(-1)[0]
    k = int(probs.argmax())
    target = "yes" if ANSWERS[k] != "yes" else "no"
    code, _, stderr = run(capsys, "explain", STAR, "--model", path, "--method", METHOD, "--text", QUESTIONS[0],
                          "--target", target.upper(), "--out", tmp_path / "o")
    assert code == 0, stderr
    t = ANSWERS.index(target)
    assert drawn == [[f"answer: {ANSWERS[k]} ({probability(float(probs[k]))})",
                      f"explained: {target} ({probability(float(probs[t]))})"]]
    label = prediction_label("18_star", torch.log(probs), model.class_name, target=t, question=QUESTIONS[0])
    assert label.splitlines() == ["18_star", f"Q: {QUESTIONS[0]}", *drawn[0]]
    assert "explained: " not in "".join(answer_lines(torch.log(probs), model.class_name, k))   # the predicted one


def test_the_grid_colours_the_words_under_each_overlay():
    tokens = ("[CLS]", "what", "colour", "is", "the", "star", "?", "[SEP]")
    relevance = torch.tensor([[0.9, 0.1, 0.4, 0.0, 0.2, 1.0, 0.3, 0.5, 0.0, 0.0]])   # padding columns at the end
    images = torch.full((1, 3, 16, 16), 0.5)
    plain = np.asarray(grid(images, {"m": torch.rand(1, 16, 16)}, ["x"], cell=120))
    sheet = np.asarray(grid(images, {"m": torch.rand(1, 16, 16)}, ["x"], text_tokens=[tokens],
                            text_maps={"m": relevance}, cell=120))
    colours = word_colours(tokens, relevance[0])
    assert colours == [pytest.approx(c) if c else None for c in expected_colours(tokens, relevance[0, :8])]
    height, boxes, _ = place_words(tokens, colours, 120)
    assert sheet.shape[0] == plain.shape[0] + height + 4 and len(boxes) == 6   # the row grew; a box per word
    header = plain.shape[0] - 46 - 120 - 4                                     # the titles above the row
    for left, top, right, bottom, colour in boxes:                             # each box painted in its colour
        x, y = 120 + 4 + 120 + 4 + left + 1, header + 120 + 4 + top + 1
        assert tuple(sheet[y, x]) == tuple(np.round(np.asarray(colour) * 255).astype(np.uint8))


def test_explanation_save_writes_the_text_map_and_overlay_takes_words(files, tmp_path):
    model = vitx.load_model(files / "single.safetensors")
    exp = vitx.explain(model, [STAR], text=QUESTIONS[:1], method=METHOD)
    written = exp.save(tmp_path, scale=2)
    assert [p.name for p in written] == [f"18_star_{METHOD}{s}" for s in (".png", ".npy", "_text.json")]
    assert json.loads(written[2].read_text()) == exp.text_relevance(0)
    assert exp.overlay(0, words=False).size == (64, 64)                 # the heatmap alone
    assert exp.overlay(0).width == 192 and exp.overlay(0).height > 64   # words and answer below by default
    image_only = vitx.explain(vitx.load_model(files / "vit.safetensors"), [STAR], method="rollout")
    assert image_only.overlay(0).size == (64, 64)
    with pytest.raises(VitxError, match="needs a bi-modal explanation"):
        image_only.overlay(0, words=True)
    with pytest.raises(VitxError, match="no text map"):
        image_only.text_relevance(0)


BAD = {  # --model, images, more options, words of the one-line error
    "text for an image-only model": ("vit", [STAR], ["--text", "is there a star?"], "reads images only"),
    "no text for a bi-modal model": ("dual", [STAR], [], "answers questions about images"),
    "two images, one question": ("dual", [STAR, CIRCLE], ["--text", "is there a star?"],
                                 "question for 2 images: give one question per image"),
    "one image, two questions": ("dual", [STAR], ["--text", "is there a star?", "--text", "what colour is the star?"],
                                 "got 2 questions for 1 image:"),
    "empty question": ("dual", [STAR], ["--text", ""], "is empty"),
    "blank question": ("dual", [STAR], ["--text", "  "], "is empty"),
    "question too long": ("dual", [STAR], ["--text", "what colour is the star left of the red circle right of the "
                                                     "blue cross?"], "more than max_length=12"),
    "answer that does not exist": ("dual", [STAR], ["--text", "what colour is the star?", "--target", "purple-ish"],
                                   "unknown target class 'purple-ish'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_questions_are_one_line_and_write_nothing(case, files, tmp_path, capsys):
    model, images, more, words = BAD[case]
    out = tmp_path / "o" / "deeper"
    code, stdout, stderr = run(capsys, "explain", *images, "--model", files / f"{model}.safetensors",
                               "--method", METHOD if model != "vit" else "rollout", *more, "--out", out)
    assert code == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("vitx: error: ") and "Traceback" not in stderr
    assert words in stderr, stderr
    assert not (tmp_path / "o").exists()


def test_words_outside_the_vocabulary_are_named_once_in_one_line_and_read_as_unknown(files, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, stderr = run(capsys, "explain", STAR, CIRCLE, "--model", files / "dual.safetensors", "--method", METHOD,
                          "--text", "is there a pink star?", "--text", "what colour is the blob?", "--out", out)
    assert code == 0, stderr
    warning = "vitx: warning: words outside the vocabulary, encoded as [UNK]: ['blob', 'pink']\n"
    assert stderr.count("vitx: warning:") == 1 and stderr.count(warning) == 1   # once, though encoded per run
    assert json.loads((out / f"18_star_{METHOD}_text.json").read_text())["tokens"] == \
        ["[CLS]", "is", "there", "a", "[UNK]", "star", "?", "[SEP]"]
