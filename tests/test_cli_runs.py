"""`vitx explain` and `vitx bench` as runs: progress per chunk, the cost stated first, --param, targets in any
form, pages of the grid, outputs written as each method finishes and nothing empty left behind, --version."""
from __future__ import annotations

import importlib.metadata
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitx
import vitx.cli.explaining
from vitx import registry
from vitx.cli import main
from vitx.cli.cost import Passes, estimate, method_cost
from vitx.methods.perturbation import occlusion_windows
from vitx.registry import get_method

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
CIRCLE, STAR, HEART = SAMPLES / "1_circle.png", SAMPLES / "18_star.png", SAMPLES / "3_heart.png"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def explain_args(out, *more, images=(CIRCLE,)):
    return ["explain", *images, "--model", "shapes-vit", "--out", out, *more]


class Bars:
    """Stands in for tqdm: records each bar's description, total and updates."""
    made: list = []

    def __init__(self, total=None, desc="", **kwargs):
        self.record = {"desc": desc, "total": total, "updates": []}
        Bars.made.append(self.record)

    def update(self, n=1):
        self.record["updates"].append(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_progress_moves_per_chunk_with_the_methods_name(monkeypatch, tmp_path, capsys):
    Bars.made = []
    monkeypatch.setattr("vitx.cli.explaining.tqdm", Bars)
    code, _, err = run(capsys, *explain_args(tmp_path / "o", "--method", "rollout,saliency", "--batch-size", 2,
                                             images=(CIRCLE, STAR, HEART)))
    assert code == 0, err
    assert Bars.made == [{"desc": "rollout (1/2)", "total": 3, "updates": [2, 1]},
                         {"desc": "saliency (2/2)", "total": 3, "updates": [2, 1]}]
    done = []
    vitx.explain(vitx.load_model("shapes-vit"), [CIRCLE, STAR, HEART], "rollout", batch_size=1, progress=done.append)
    assert done == [1, 1, 1]


def test_cost_is_counted_from_the_registry():
    model = vitx.load_model("shapes-vit")
    layout = model.layout(torch.zeros(1, 3, 64, 64))                    # 8x8 patches

    def cost(name, **params):
        info = get_method(name)
        return method_cost(info, info.bind(params), layout)
    assert cost("generic-attention") == (Passes(1, 1), [])
    assert cost("integrated-gradients", steps=7) == (Passes(7, 7), [])
    assert cost("rise", masks=100) == (Passes(101, 0), [])
    assert cost("kernel-shap") == (Passes(2048 + 2, 0), [])
    assert cost("atman") == (Passes(1 + 64, 0), [])
    windows = occlusion_windows((8, 8), 3, 2).shape[0]
    assert cost("occlusion", window=3, stride=2) == (Passes(1 + windows, 0), [])
    assert cost("attention-flow") == (Passes(1, 0), ["one max-flow per patch"])
    assert cost("evit") == (Passes(1, 0), [])                            # a note with a comma: "(the model, ...)"
    assert cost("patch-slimming") == (Passes(2, 0), [])
    assert cost("x-pruner") == (Passes(1, 1), [])
    line = estimate([(get_method("rise"), get_method("rise").bind({"masks": 10})),
                     (get_method("saliency"), {})], 3, layout)
    assert line == "estimated cost of 2 methods on 3 images: 36 forward and 3 backward passes (most in rise 79%, " \
                   "saliency 21%)"


def test_all_states_its_cost_before_it_starts(monkeypatch, tmp_path, capsys):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("vitx.cli.explaining.explain", stop)
    code, _, err = run(capsys, *explain_args(tmp_path / "o", "--method", "all", "--param", "rise.masks=10"))
    line = next(line for line in err.splitlines() if "estimated cost" in line)
    assert code == 130 and " on 1 image: " in line and "rise" not in line.split("most in")[-1]  # 11 passes: little


def test_param_reaches_the_method_as_a_literal(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(capsys, *explain_args(out, "--method", "rise,integrated-gradients", "--param", "rise.masks=16",
                                             "--param", "integrated-gradients.steps=4", "--target", "Star"))
    assert code == 0, err
    model = vitx.load_model("shapes-vit")
    for method, params in (("rise", {"masks": 16}), ("integrated-gradients", {"steps": 4})):
        expected = vitx.explain(model, [CIRCLE], method, target=3, **params).maps[0].numpy()
        np.testing.assert_allclose(np.load(out / f"1_circle_{method}.npy"), expected, atol=1e-5)


@pytest.mark.parametrize("target", ["star", "STAR", "3", "3.0", " Star "])
def test_target_in_any_form(target, tmp_path, capsys):
    code, _, err = run(capsys, *explain_args(tmp_path / "o", "--method", "rollout", "--target", target))
    assert code == 0, err
    assert "target: <b>star</b>" in (tmp_path / "o" / "index.html").read_text()


def test_a_param_value_the_method_refuses_stops_before_anything_is_written(monkeypatch, tmp_path, capsys):
    def requires(config, params):
        if params["block"] >= 6:
            raise vitx.VitxError(f"block {params['block']} is past the model's last block")
    info = get_method("raw-attention")
    monkeypatch.setitem(registry._METHODS, "raw-attention", registry.Method(
        info.name, info.fn, info.family, info.paper, info.needs, info.output, info.cost, info.kinds, info.defaults,
        requires))
    out = tmp_path / "o"
    code, _, err = run(capsys, *explain_args(out, "--method", "raw-attention", "--param", "raw-attention.block=9"))
    assert code == 2 and err == "vitx: error: --param raw-attention.block=9: block 9 is past the model's last block\n"
    assert not out.exists()
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text("{}")
    code, _, err = run(capsys, "bench", "--model", "shapes-vit", "--methods", "raw-attention", "--n", 2,
                       "--param", "raw-attention.block=9", "--out", bench)
    assert code == 2 and err.count("\n") == 1 and "block 9 is past" in err
    assert [p.name for p in bench.iterdir()] == ["results.json"] and (bench / "results.json").read_text() == "{}"


def test_bench_exits_1_when_a_method_fails(monkeypatch, tmp_path, capsys):
    def broken(batch):
        raise RuntimeError("boom")
    monkeypatch.setitem(registry._METHODS, "broken", registry.Method(
        "broken", broken, "test", "none", frozenset(), "tokens", "1F"))
    code, _, err = run(capsys, "bench", "--model", "shapes-vit", "--methods", "broken,random", "--n", 2,
                       "--metrics", "pointing_game", "--out", tmp_path / "b")
    assert code == 1 and "vitx: broken failed: boom" in err
    assert json.loads((tmp_path / "b" / "results.json").read_text())["methods"]["broken"] == {"error": "boom"}


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_keeps_finished_methods_and_leaves_no_empty_folder(failure, monkeypatch, tmp_path, capsys):
    real, calls = vitx.explain, []

    def second_fails(*args, **kwargs):
        calls.append(kwargs.get("method"))
        if len(calls) == 2:
            raise failure("stopped")
        return real(*args, **kwargs)
    monkeypatch.setattr("vitx.cli.explaining.explain", second_fails)
    out = tmp_path / "o"
    code, _, _ = run(capsys, *explain_args(out, "--method", "rollout,saliency", images=(CIRCLE, STAR)))
    assert code == (1 if failure is RuntimeError else 130)
    assert sorted(p.name for p in out.iterdir()) == ["18_star_rollout.npy", "18_star_rollout.png",
                                                     "1_circle_rollout.npy", "1_circle_rollout.png"]
    calls.clear()
    monkeypatch.setattr("vitx.cli.explaining.explain", lambda *a, **k: (_ for _ in ()).throw(failure("stopped")))
    fresh = tmp_path / "new" / "deeper" / "o"
    code, _, _ = run(capsys, *explain_args(fresh, "--method", "rollout"))
    assert code in (1, 130) and not (tmp_path / "new").exists()


def test_many_images_make_pages(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("vitx.cli.explaining.ROWS_PER_PAGE", 2)
    out = tmp_path / "o"
    code, stdout, err = run(capsys, *explain_args(out, "--method", "rollout", images=(CIRCLE, STAR, HEART)))
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png") if p.name.startswith("grid")) == ["grid_001.png", "grid_002.png"]
    first, second = (out / "index.html").read_text(), (out / "index_002.html").read_text()
    assert 'src="grid_001.png"' in first and "1_circle_rollout.png" in first and "3_heart_rollout.png" not in first
    assert 'src="grid_002.png"' in second and "3_heart_rollout.png" in second and "18_star" not in second
    assert all('<a href="index_002.html">2</a>' in page for page in (first, second))
    assert "2 pages of 2 images" in stdout and "wrote 3 overlays" in stdout


def test_one_image_one_overlay(tmp_path, capsys):
    code, stdout, _ = run(capsys, *explain_args(tmp_path / "o", "--method", "rollout"))
    assert code == 0 and "wrote 1 overlay (<image>_<method>.png) and 1 map (.npy)" in stdout


def test_cjk_file_names_print_no_warnings(tmp_path, capsys):
    image = tmp_path / "图片_星.png"
    image.write_bytes(STAR.read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run(capsys, *explain_args(tmp_path / "o", "--method", "rollout", images=(image,)))
    assert code == 0 and "Glyph" not in err and not [w for w in caught if "Glyph" in str(w.message)]
    assert (tmp_path / "o" / "图片_星_rollout.png").exists()


def test_version(capsys):
    assert vitx.__version__ == importlib.metadata.version("vitx")
    code, stdout, _ = run(capsys, "--version")
    assert code == 0 and stdout == f"vitx {vitx.__version__}\n"


def test_multi_label_rows_name_every_predicted_class_and_the_explained_one(monkeypatch, tmp_path, capsys):
    drawn = {}
    real = vitx.cli.explaining.grid_pages
    monkeypatch.setattr("vitx.cli.explaining.grid_pages",
                        lambda images, columns, labels, **k: drawn.setdefault("labels", labels) and
                        real(images, columns, labels, **k))
    data = vitx.data.shapes(n=1, seed=3, variant="multi")
    image = tmp_path / "two.png"
    Image.fromarray((data.images[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(image)
    code, _, err = run(capsys, "explain", image, "--model", "shapes-vit-multi", "--method", "rollout",
                       "--out", tmp_path / "o")
    assert code == 0, err
    model = vitx.load_model("shapes-vit-multi")
    present = [model.class_name(int(k)) for k in data.labels[0].nonzero()]
    lines = drawn["labels"][0].splitlines()
    assert lines[:2] == ["two", "predicted (p ≥ 0.5):"] and len(present) == 2
    assert sorted(line.split(" (")[0] for line in lines[2:4]) == sorted(present)
    assert lines[4].startswith(f"target: {lines[2].split(' (')[0]} (")   # the top class is the one explained


def test_a_constant_map_is_written_with_a_warning_naming_the_image(capsys, tmp_path):
    from vitx.checkpoint import read_metadata, save_checkpoint
    from vitx.zoo import zoo_path
    net = vitx.load_model("shapes-vit").net
    with torch.no_grad():
        net.head.weight.zero_()                 # every logit constant: no gradient reaches any attention
    blind = save_checkpoint(net, tmp_path / "blind.safetensors", read_metadata(zoo_path("shapes-vit")))
    code, _, err = run(capsys, "explain", CIRCLE, STAR, "--model", blind, "--method", "generic-attention,rollout",
                       "--out", tmp_path / "out")
    assert code == 0
    assert "warning: generic-attention gave a constant or non-finite map for 2 images (1_circle, 18_star)" in err
    assert "rollout gave" not in err
    assert not np.load(tmp_path / "out" / "1_circle_generic-attention.npy").any()


def test_resize_crop_and_original_size_maps(capsys, tmp_path):
    square = Image.open(CIRCLE).convert("RGB")
    wide = Image.new("RGB", (160, 64))
    wide.paste(square.resize((64, 64)), (48, 0))            # the picture in the middle, black bars beside it
    wide.save(tmp_path / "wide.png")
    code, _, _ = run(capsys, "explain", tmp_path / "wide.png", "--model", "shapes-vit", "--method", "rollout",
                     "--resize", "crop", "--original-size", "--out", tmp_path / "out")
    assert code == 0
    kept = np.load(tmp_path / "out" / "wide_rollout.npy")
    assert kept.shape == (64, 160)                           # the image's own size
    assert not kept[:, :48].any() and not kept[:, 112:].any() and kept[:, 48:112].max() == 1  # cropped away: 0
    square_map = vitx.explain(vitx.load_model("shapes-vit"), [square.resize((64, 64))], "rollout").maps[0]
    np.testing.assert_allclose(kept[:, 48:112], square_map.numpy(), atol=1e-6)
    code, _, _ = run(capsys, "explain", tmp_path / "wide.png", "--model", "shapes-vit", "--method", "rollout",
                     "--out", tmp_path / "stretched")
    assert np.load(tmp_path / "stretched" / "wide_rollout.npy").shape == (64, 64)
