"""`vitx explain` on a detector: an overlay and map per object named <image>_q<query>_<class>_<method>, objects.json,
the summary table, --target as queries or class names, --method all on the methods that apply to detectors, no
detection (a warning, nothing written) and every bad input refused in one line with nothing written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import vitx
from vitx.checkpoint import save_checkpoint
from vitx.cli import applicable_methods, main
from vitx.models import create_model
from vitx.registry import get_method, method_names
from vitx.viz import probability

from test_detr_explanation import CIRCLE, METHOD, STAR, save_detr

THRESHOLD = ("--score-threshold", 0)   # an untrained detector: every query whose likeliest class is an object


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("detr_cli")
    save_detr(d / "detr.safetensors")
    save_checkpoint(create_model("vitx_shapes", depth=1), d / "vit.safetensors",
                    {"arch": "vitx_shapes", "config": {"depth": 1}})
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def expected_objects(files, target=None, threshold=0.0) -> tuple[list[dict], list[str]]:
    """What the Python API explains: the objects and their file stems."""
    exp = vitx.explain(vitx.load_model(files / "detr.safetensors"), [CIRCLE, STAR], METHOD, target=target,
                       score_threshold=threshold)
    return exp.objects, exp.names()


def test_explain_writes_each_objects_overlay_map_and_objects_json(files, tmp_path, capsys):
    out = tmp_path / "o"
    code, stdout, stderr = run(capsys, "explain", CIRCLE, STAR, "--model", files / "detr.safetensors",
                               "--method", METHOD,
                               *THRESHOLD, "--out", out)
    assert code == 0, stderr
    objects, stems = expected_objects(files)
    assert len(objects) == 16
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}_{METHOD}{end}" for stem in stems for end in (".png", ".npy")]
        + ["grid.png", "index.html", "objects.json"])
    rows = json.loads((out / "objects.json").read_text())
    assert [{k: row[k] for k in objects[0]} for row in rows] == objects
    assert [row["name"] for row in rows] == stems and {row["image_name"] for row in rows} == {"1_circle", "18_star"}
    exp = vitx.explain(vitx.load_model(files / "detr.safetensors"), [CIRCLE, STAR], METHOD, score_threshold=0)
    for i, row in enumerate(rows):
        assert row["files"] == [f"{stems[i]}_{METHOD}.png", f"{stems[i]}_{METHOD}.npy"]
        np.testing.assert_allclose(np.load(out / row["files"][1]), exp.maps[i].numpy(), atol=1e-5)
    # the summary: one line per object with its image, query, class, score and box
    table = stdout.split("16 objects explained:\n")[1].splitlines()
    assert table[0].split() == ["image", "query", "class", "score", "box", "(x0,", "y0,", "x1,", "y1)"]
    for line, o in zip(table[1:17], objects):
        image, query, name, score, box = re.fullmatch(r"(\S+)\s+(\d+)\s+(\S+)\s+(\S+)\s+\((.*)\)", line).groups()
        assert (image, int(query), name, score) == (("1_circle", "18_star")[o["image"]], o["query"], o["class"],
                                                    probability(o["score"]))
        np.testing.assert_allclose([float(v) for v in box.split(",")], o["box"], atol=0.051)
    assert f"wrote 16 overlays (<image>_q<query>_<class>_<method>.png) and 16 maps (.npy) to {out}/" in stdout
    page = (out / "index.html").read_text()
    assert all(page.count(f"src=\"{stem}_{METHOD}.png\"") == 1 for stem in stems)
    assert "16 objects; methods:" in page and "target:" not in page
    first = objects[0]
    assert f"detected: <b>{first['class']}</b> ({first['score']:.3f})" in page


def test_target_takes_queries_or_class_names(files, tmp_path, capsys):
    code, _, stderr = run(capsys, "explain", CIRCLE, STAR, "--model", files / "detr.safetensors", "--method", METHOD,
                          "--target", "5,2", "--out", tmp_path / "q")
    assert code == 0, stderr
    objects, stems = expected_objects(files, target=[2, 5])
    assert [(o["image"], o["query"]) for o in objects] == [(0, 2), (0, 5), (1, 2), (1, 5)]
    assert sorted(p.name for p in (tmp_path / "q").glob("*.png")) == sorted(
        [f"{stem}_{METHOD}.png" for stem in stems] + ["grid.png"])

    every, _ = expected_objects(files)
    wanted = every[0]["class"]
    code, _, stderr = run(capsys, "explain", CIRCLE, STAR, "--model", files / "detr.safetensors", "--method", METHOD,
                          "--target", wanted.upper(), *THRESHOLD, "--out", tmp_path / "c")
    assert code == 0, stderr
    rows = json.loads((tmp_path / "c" / "objects.json").read_text())
    assert [row["query"] for row in rows] == [o["query"] for o in every if o["class"] == wanted]
    assert {row["class"] for row in rows} == {wanted}


def test_method_all_runs_the_methods_for_detectors_and_names_the_others(files, tmp_path, capsys):
    model = vitx.load_model(files / "detr.safetensors")
    usable = [info.name for info in applicable_methods(model, model.layout(torch.zeros(1, 3, 64, 64)))]
    capsys.readouterr()
    assert METHOD in usable and all("detr" in get_method(name).kinds for name in usable)
    out = tmp_path / "o"
    code, stdout, stderr = run(capsys, "explain", CIRCLE, "--model", files / "detr.safetensors", "--method", "all",
                               *THRESHOLD, "--target", "0", "--out", out)
    assert code == 0, stderr
    stem = expected_objects(files, target=[0])[1][0]
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"{stem}_{name}.npy" for name in usable)
    assert json.loads((out / "objects.json").read_text())[0]["files"] == [
        f"{stem}_{name}{end}" for name in usable for end in (".png", ".npy")]
    for name in set(method_names()) - set(usable):
        assert re.search(rf"vitx: skipped: method '{name}' does not apply to 'detr' models", stderr)
    assert re.search(r"estimated cost of \d+ methods? on 1 object:", stderr)


def test_no_detection_warns_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "none" / "o"
    code, stdout, stderr = run(capsys, "explain", CIRCLE, STAR, "--model", files / "detr.safetensors",
                               "--method", METHOD,
                               "--score-threshold", "1", "--out", out)
    assert code == 0 and stdout == ""
    assert stderr == "vitx: warning: no detection with a score above 1 in 2 image(s): nothing to explain\n"
    assert not (tmp_path / "none").exists()


BAD = {
    "a query out of range": (("--target", "8"), "target query 8 is out of range: this detector has 8 queries (0-7)"),
    "a negative query": (("--target", "-1"), "target query -1 is out of range"),
    "an unknown class": (("--target", "dog"), "unknown target class 'dog'"),
    "queries and classes mixed": (("--target", "1,circle"), "a query index or a class name (not both)"),
    "a threshold above 1": (("--score-threshold", "1.5"), "argument --score-threshold: expected a number in [0, 1]"),
    "a negative threshold": (("--score-threshold", "-0.1"), "expected a number in [0, 1], got '-0.1'"),
    "a threshold that is no number": (("--score-threshold", "nan"), "expected a number in [0, 1], got 'nan'"),
    "a method for NesT alone": (("--method", "nest-cam"), "method 'nest-cam' does not apply to 'detr' models"),
    "a question": (("--text", "what is it?"), "text was given (--text), and this 'detr' model reads images only"),
    "a threshold on a classifier": (("--model", "vit", "--score-threshold", "0.5"),
                                    "--score-threshold picks a detector's objects, and this 'vit' model is not a "
                                    "detector"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_writes_nothing(case, files, tmp_path, capsys):
    given, message = BAD[case]
    given = list(given)
    model = files / "detr.safetensors"
    if given[0] == "--model":
        model, given = files / f"{given[1]}.safetensors", given[2:]
    method = [] if "--method" in given else ["--method", METHOD]
    code, stdout, stderr = run(capsys, "explain", CIRCLE, "--model", model, *method, *given,
                               "--out", tmp_path / "new" / "o")
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("vitx: error: ") and message in stderr, stderr
    assert not (tmp_path / "new").exists()


def test_original_size_maps_follow_each_objects_image(files, tmp_path, capsys):
    from PIL import Image
    wide = tmp_path / "wide.png"
    Image.open(CIRCLE).resize((100, 80)).save(wide)
    out = tmp_path / "o"
    code, _, stderr = run(capsys, "explain", wide, STAR, "--model", files / "detr.safetensors", "--method", METHOD,
                          "--target", "1,4", "--original-size", "--out", out)
    assert code == 0, stderr
    shapes = {row["name"]: np.load(out / row["files"][1]).shape
              for row in json.loads((out / "objects.json").read_text())}
    assert len(shapes) == 4
    assert all(shape == ((80, 100) if name.startswith("wide_") else (64, 64)) for name, shape in shapes.items())
