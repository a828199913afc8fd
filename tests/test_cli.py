"""The `vitx` command end to end: what `vitx explain` writes, the listings, `vitx train`'s wiring, and
one-line errors (with nothing created) on every kind of bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import vitx
from vitx.checkpoint import save_checkpoint
from vitx.cli import applicable_methods, main
from vitx.data import CLASS_NAMES
from vitx.models import create_model
from vitx.registry import get_method, method_names

from reference import OWN_ARCHITECTURE

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
CIRCLE, STAR = SAMPLES / "1_circle.png", SAMPLES / "18_star.png"
CLS_METHODS = [m["name"] for m in vitx.methods() if "cls_token" in m["needs"]]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Random-weight models (with and without a class token, and a timm CNN) and bad inputs, in one directory."""
    d = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    cnn = timm.create_model("test_resnet")
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(d / "resnet.safetensors"))
    save_checkpoint(create_model("vitx_shapes", depth=2), d / "tiny.safetensors",
                    {"arch": "vitx_shapes", "config": {"depth": 2}, "class_names": list(CLASS_NAMES)})
    config = {"class_token": False, "global_pool": "avg", "depth": 2}
    save_checkpoint(create_model("vitx_shapes", **config), d / "nocls.safetensors", {"arch": "vitx_shapes", "config": config})
    (d / "notes.png").write_text("not an image")
    (d / "truncated.png").write_bytes(CIRCLE.read_bytes()[:200])
    (d / "a").mkdir()
    (d / "a" / "1_circle.png").write_bytes(CIRCLE.read_bytes())
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_explain_writes_overlays_maps_grid_and_page(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "explain", CIRCLE, STAR, "--model", files / "tiny.safetensors",
                          "--method", "rollout,saliency", "--target", "star", "--out", out)
    assert code == 0
    assert str(out / "grid.png") in stdout and str(out / "index.html") in stdout
    model = vitx.load_model(files / "tiny.safetensors")
    for method in ("rollout", "saliency"):
        expected = vitx.explain(model, [CIRCLE, STAR], method=method, target="star").maps.numpy()
        for i, stem in enumerate(("1_circle", "18_star")):
            overlay = Image.open(out / f"{stem}_{method}.png")
            assert overlay.size == (256, 256) and overlay.mode == "RGB"   # 64 px input, enlarged 4x
            np.testing.assert_allclose(np.load(out / f"{stem}_{method}.npy"), expected[i], atol=1e-5)
    grid = Image.open(out / "grid.png")
    assert grid.width == 184 + 3 * 184 and 2 * 180 < grid.height < 3 * 180   # label panel, image + 2 methods, 2 rows

    page = (out / "index.html").read_text()
    images = Images()
    images.feed(page)
    assert images.sources == ["grid.png"] + [f"{stem}_{method}.png" for method in ("rollout", "saliency")
                                             for stem in ("1_circle", "18_star")]   # the files beside the page
    assert page.count("target: <b>star</b>") == 4 and "<h2 id=\"rollout\">" in page and "<h2 id=\"saliency\">" in page
    assert "wrote 4 overlays (<image>_<method>.png) and 4 maps (.npy)" in stdout


def test_explain_converts_grayscale_rgba_and_16_bit_images(files, tmp_path, capsys):
    rgb = np.asarray(Image.open(CIRCLE))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert [Image.open(tmp_path / f"{n}.png").mode for n in ("gray", "rgba")] == ["L", "RGBA"]
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = tmp_path / "out"
    code, _, _ = run(capsys, "explain", *(tmp_path / f"{n}.png" for n in ("gray", "rgba", "deep")),
                     "--model", files / "tiny.safetensors", "--method", "gradcam", "--target", "3", "--batch-size", "2",
                     "--out", out)
    assert code == 0
    for stem in ("gray", "rgba", "deep"):
        assert Image.open(out / f"{stem}_gradcam.png").size == (256, 256)
        assert np.load(out / f"{stem}_gradcam.npy").shape == (64, 64)
    assert (out / "index.html").read_text().count("target: <b>star</b>") == 3     # --target 3 is "star"


def test_explain_all_runs_every_registered_method(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", CIRCLE, "--model", files / "tiny.safetensors", "--method", "all", "--out", out)
    assert code == 0 and "vitx: estimated cost of " in err
    # every ViT method but vit-shapley, which needs an explainer trained for the model (the zoo has none for it)
    ran = [m for m in method_names() if "vit" in get_method(m).kinds and "trained_module" not in get_method(m).needs
           and m not in OWN_ARCHITECTURE]
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"1_circle_{m}.npy" for m in ran)
    assert (out / "index.html").read_text().count("<h2 ") == len(ran)


def test_all_skips_methods_that_do_not_apply(files, capsys):
    model = vitx.load_model(files / "nocls.safetensors")
    usable = [m.name for m in applicable_methods(model, model.layout(torch.zeros(1, 3, 64, 64)))]
    assert CLS_METHODS and not set(CLS_METHODS) & set(usable) and "gradcam" in usable
    other_kinds = [m for m in method_names() if "vit" not in get_method(m).kinds]   # NesT's own methods
    untrained = [m for m in method_names() if "trained_module" in get_method(m).needs and m not in CLS_METHODS
                 and m not in other_kinds]     # no module trained for this model (diffmask)
    skipped = len(CLS_METHODS) + len(other_kinds) + len(untrained) + len(OWN_ARCHITECTURE)
    assert capsys.readouterr().err.count("vitx: skipped:") == skipped


def test_entry_point_in_a_subprocess(files, tmp_path):
    vitx_command = Path(sys.executable).parent / "vitx"
    out = tmp_path / "out"
    done = subprocess.run([str(vitx_command), "explain", str(CIRCLE), "--model", str(files / "tiny.safetensors"),
                           "--method", "gradcam", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and str(out / "grid.png") in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["1_circle_gradcam.npy", "1_circle_gradcam.png", "grid.png", "index.html"]


def test_methods_and_models_listings(capsys):
    code, table, _ = run(capsys, "methods")
    lines = table.splitlines()
    assert code == 0 and lines[0].split() == ["name", "family", "kinds", "needs", "cost", "memory", "paper"]
    assert [line.split()[0] for line in lines[2:]] == method_names()
    assert "attention,cls_token" in table and "Abnar & Zuidema" in table
    assert json.loads(run(capsys, "methods", "--json")[1]) == vitx.methods()
    code, table, _ = run(capsys, "models")
    columns = ["name", "kind", "architecture", "dataset", "quality", "file"]
    assert code == 0 and table.splitlines()[0].split() == columns
    assert [line.split()[0] for line in table.splitlines()[2:]] == [row["name"] for row in vitx.models()]
    assert "AP50 0.993" in table and "accuracy 0.998" in table and "zero-shot accuracy 0.997, R@1 0.638" in table
    assert json.loads(run(capsys, "models", "--json")[1]) == vitx.models()


def test_train_forwards_its_options(monkeypatch, tmp_path, capsys):
    calls = []
    fake = types.ModuleType("vitx.training")
    fake.train = lambda name, **options: calls.append((name, options)) or {"accuracy": 0.5}
    monkeypatch.setitem(sys.modules, "vitx.training", fake)
    code, stdout, _ = run(capsys, "train", "shapes-vit", "--seed", "3", "--steps", "10", "--batch-size", "4",
                          "--out", tmp_path)
    assert code == 0 and f"{tmp_path / 'shapes-vit'}.safetensors" in stdout and "accuracy 0.5" in stdout
    assert run(capsys, "train", "shapes-vit-multi")[0] == 0
    assert calls == [("shapes-vit", {"out_dir": tmp_path, "seed": 3, "steps": 10, "batch_size": 4}),
                     ("shapes-vit-multi", {"out_dir": vitx.zoo.ZOO_DIR})]


BAD = {  # what is wrong: (arguments after `explain` or a whole command line, a word the message must contain)
    "missing image": (["nowhere.png"], "does not exist"),
    "non-image file": (["{files}/notes.png"], "cannot read"),
    "truncated image": (["{files}/truncated.png"], "cannot read"),
    "directory among images": ([str(CIRCLE), "{files}/a"], "directory"),   # one folder alone is a collection
    "same file names": ([CIRCLE, "{files}/a/1_circle.png"], "named '1_circle'"),
    "unknown model": (["--model", "no-such-model"], "unknown model"),
    "missing model file": (["--model", "{files}/absent.safetensors"], "does not exist"),
    "unknown method": (["--method", "rollout,no-such-method"], "unknown method 'no-such-method'"),
    "method without a class token": (["--model", "{files}/nocls.safetensors", "--method", "attention-flow"],
                                     "class token"),
    "target out of range": (["--target", "8"], "out of range"),
    "negative target": (["--target", "-1"], "out of range"),
    "unknown target name": (["--target", "hexagon"], "unknown target class"),
    "uninspectable model": (["--model", "timm:test_resnet", "--weights", "{files}/resnet.safetensors"], "cannot inspect"),
    "weights for a non-timm model": (["--weights", "{files}/tiny.safetensors"], "--weights"),
    "bad device": (["--device", "no-such-device"], "unknown device 'no-such-device'"),
    "mps here": (["--device", "mps"], "device 'mps' is not available on this machine"),
    "meta device": (["--device", "meta"], "device 'meta' cannot run a model"),
    "absent GPU": (["--device", "cuda:7"], "device 'cuda:7'"),
    "unknown --param": (["--param", "rollout.nope=1"], "method 'rollout' has no parameter 'nope'"),
    "--param of another method": (["--param", "rise.masks=8"], "'rise' is not among the methods explained"),
    "--param of no method": (["--param", "no-such.masks=8"], "unknown method 'no-such'"),
    "malformed --param": (["--param", "masks=8"], "expected METHOD.NAME=VALUE"),
    "fractional target": (["--target", "2.5"], "whole number"),
    "bad batch size": (["--batch-size", "0"], "--batch-size"),
    "out is a file": (["--out", "{files}/notes.png"], "not a directory"),
    "unwritable out": (["--out", "{files}/notes.png/sub"], "cannot write"),
    "no command": ([None], "required"),
    "unknown option": (["--colour", "red"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_creates_nothing(case, files, tmp_path, capsys):
    change, word = BAD[case]
    out = tmp_path / "out"
    options = {"--model": str(files / "tiny.safetensors"), "--method": "rollout", "--out": str(out)}
    images = [str(CIRCLE)]
    if change == [None]:
        argv = []
    else:
        change = [str(a).format(files=files) for a in change]
        if change[0].startswith("--"):
            options.update(zip(change[::2], change[1::2]))
        else:
            images = change
        argv = ["explain", *images, *(x for pair in options.items() for x in pair)]
    code, stdout, stderr = run(capsys, *argv)
    assert code == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("vitx: error: ") and len(stderr) < 600, stderr  # 600: a list of known names, never a dump
    assert word in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(files, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr("vitx.cli.explaining.explain", broken)
    argv = ["explain", CIRCLE, "--model", files / "tiny.safetensors", "--method", "rollout", "--out", tmp_path / "o"]
    code, _, stderr = run(capsys, *argv)
    assert code == 1 and stderr == "vitx: error: unexpected RuntimeError: boom second line (run with --debug to see the traceback)\n"
    code, _, stderr = run(capsys, *argv, "--debug")
    assert code == 1 and "Traceback" in stderr and stderr.endswith("vitx: error: unexpected RuntimeError: boom second line\n")


def test_help_exits_zero(capsys):
    code, stdout, _ = run(capsys, "explain", "--help")
    assert code == 0 and "--target" in stdout


def test_explain_refuses_input_the_model_cannot_take(files):
    model = vitx.load_model(files / "tiny.safetensors")
    with pytest.raises(vitx.VitxError, match="multiple of the patch size"):
        vitx.explain(model, torch.rand(1, 3, 60, 60), method="rollout")
    with pytest.raises(vitx.VitxError, match=r"\(B, 3, H, W\)"):
        vitx.explain(model, torch.rand(1, 4, 64, 64), method="rollout")
    fixed = vitx.load_model(model.net, dynamic_size=False)
    with pytest.raises(vitx.VitxError, match="takes 64x64 images, got 32x32"):
        vitx.explain(fixed, torch.rand(1, 3, 32, 32), method="rollout")


def test_train_refuses_an_unknown_name_in_one_line(capsys):
    code, _, stderr = run(capsys, "train", "no-such-model")
    assert code == 2 and len(stderr.splitlines()) == 1 and "'no-such-model'" in stderr
