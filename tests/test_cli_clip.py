"""`vitx explain --text` on image-text (CLIP-like) models: one overlay, map and text map per (image, prompt) pair named
by the prompt's index, equal to vitx.explain's; the similarity under each overlay and the prompt's words coloured by
the text map; --target picks one prompt; every bad prompt or target refused in one line with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vitx
import vitx.explanation
from vitx.checkpoint import save_checkpoint
from vitx.cli import main
from vitx.models import create_model
from vitx.viz.words import word_colours

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
CIRCLE, STAR = SAMPLES / "1_circle.png", SAMPLES / "18_star.png"
PROMPTS = ["a red star", "a blue circle"]
CONFIG = {"image_layers": 2, "text_layers": 1}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """An untrained image-text model saved as a vitx checkpoint."""
    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    save_checkpoint(create_model("clip_shapes", **CONFIG), d / "clip.safetensors",
                    {"arch": "clip_shapes", "config": CONFIG, "mean": [0.5] * 3, "std": [0.25] * 3})
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_image_with_every_prompt(files, tmp_path, capsys, monkeypatch):
    drawn = []
    real = vitx.explanation.captioned

    def captioned(picture, tokens, colours, lines=()):
        drawn.append((tuple(tokens), colours, list(lines)))
        return real(picture, tokens, colours, lines)

    monkeypatch.setattr(vitx.explanation, "captioned", captioned)
    out = tmp_path / "o"
    code, stdout, stderr = run(capsys, "explain", STAR, CIRCLE, "--model", files / "clip.safetensors", "--method",
                               "generic-attention,gradcam", "--text", PROMPTS[0], "--text", PROMPTS[1], "--out", out)
    assert code == 0, stderr
    stems = ["18_star_p0", "18_star_p1", "1_circle_p0", "1_circle_p1"]          # image-major, the prompt's index
    written = {p.name for p in out.iterdir()}
    for stem in stems:
        assert {f"{stem}_generic-attention{s}" for s in (".png", ".npy", "_text.json")} <= written
        assert {f"{stem}_gradcam.png", f"{stem}_gradcam.npy"} <= written
        assert f"{stem}_gradcam_text.json" not in written                        # gradcam has no text map
    assert "8 overlays (<image>_p<prompt>_<method>.png), 8 maps (.npy) and 4 text maps" in stdout
    model = vitx.load_model(str(files / "clip.safetensors"))
    exp = vitx.explain(model, [str(STAR), str(CIRCLE)], "generic-attention", text=PROMPTS)
    with torch.no_grad():
        similarity = model.adapter.similarities(model.preprocess([str(STAR), str(CIRCLE)]), model.encode_text(PROMPTS))
    for row, stem in enumerate(stems):
        np.testing.assert_allclose(np.load(out / f"{stem}_generic-attention.npy"), exp.maps[row].numpy(), atol=1e-6)
        saved = json.loads((out / f"{stem}_generic-attention_text.json").read_text())
        assert saved["tokens"] == ["[CLS]", *PROMPTS[row % 2].split(), "[SEP]"]
        np.testing.assert_allclose(saved["relevance"], exp.text_maps[row, :5].numpy(), atol=1e-6)
        tokens, colours, lines = drawn[row]                                       # generic-attention's overlays first
        assert tokens == tuple(saved["tokens"]) and colours == word_colours(tokens, exp.text_maps[row])
        assert lines[0] == f"similarity: {float(similarity[row // 2, row % 2]):.3f}"
        assert lines[1].startswith("zero-shot: ") and lines[1].endswith("among 2 prompts")
        _, grey, _ = drawn[4 + row]                                               # gradcam's: the words in grey
        assert grey == [None] * 5
    assert (out / "grid.png").exists() and (out / "index.html").exists()


def test_target_picks_one_prompt(files, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, stderr = run(capsys, "explain", STAR, "--model", files / "clip.safetensors", "--method", "saliency",
                          "--text", PROMPTS[0], "--text", PROMPTS[1], "--target", "a blue circle", "--out", out)
    assert code == 0, stderr
    assert sorted(p.name for p in out.glob("*saliency*")) == ["18_star_p1_saliency.npy", "18_star_p1_saliency.png",
                                                              "18_star_p1_saliency_text.json"]


BAD = {
    "no prompt": ("clip", [], "pass one or more prompts as text=[...] (--text on the command line)"),
    "empty prompt": ("clip", ["--text", "a red star", "--text", ""], "prompt 1 is empty"),
    "blank prompt": ("clip", ["--text", "   "], "prompt 0 is empty"),
    "prompt too long": ("clip", ["--text", " ".join(["a red star and"] * 4)], "more than max_length=16"),
    "prompt to an image-only model": ("shapes-vit", ["--text", "a red star"], "this 'vit' model reads images only"),
    "target out of range": ("clip", ["--text", "a red star", "--text", "a blue circle", "--target", "2"],
                            "target prompt 2 is out of range: 2 prompts given (0-1)"),
    "target not a prompt": ("clip", ["--text", "a red star", "--target", "a green heart"], "'a green heart'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_prompts_are_one_line_and_write_nothing(case, files, tmp_path, capsys):
    model, more, words = BAD[case]
    out = tmp_path / "o"
    out.mkdir()
    (out / "kept.txt").write_text("there before\n")
    model = files / f"{model}.safetensors" if model == "clip" else model   # the zoo's image-only ViT
    code, stdout, stderr = run(capsys, "explain", STAR, "--model", model,
                               "--method", "saliency", *more, "--out", out)
    assert code == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("vitx: error: ") and "Traceback" not in stderr
    assert words in stderr, stderr
    assert [p.name for p in out.iterdir()] == ["kept.txt"]
