"""A detector's explanation as users see it: a detr_shapes checkpoint loads as a detector; each object's overlay frames
its box and labels it "class score"; names are distinct per object; save writes an overlay and map per object and
objects.json (merged across methods); an explanation of no object writes nothing; grids frame the boxes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vitx
import vitx.viz.boxes
from vitx.checkpoint import save_checkpoint
from vitx.data import CLASS_NAMES
from vitx.errors import VitxError
from vitx.models import create_model
from vitx.naming import object_stem, update_object_index
from vitx.viz import grid, overlay, probability
from vitx.viz.boxes import label_size

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
CIRCLE, STAR = SAMPLES / "1_circle.png", SAMPLES / "18_star.png"
METHOD = "generic-attention"
TINY = {"encoder_layers": 1, "decoder_layers": 1}


def save_detr(path: Path, seed: int = 0) -> torch.nn.Module:
    """An untrained tiny detr_shapes saved with the metadata the zoo's files carry."""
    torch.manual_seed(seed)
    net = create_model("detr_shapes", **TINY).eval()
    save_checkpoint(net, path, {"arch": "detr_shapes", "kind": "detr", "config": TINY, "class_names": list(CLASS_NAMES),
                                "mean": [0.5] * 3, "std": [0.25] * 3})
    return net


@pytest.fixture(scope="module")
def detr_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("detr") / "detr.safetensors"
    save_detr(path)
    return path


@pytest.fixture(scope="module")
def exp(detr_file):
    """Every query of two images (threshold 0: an untrained net's detections)."""
    return vitx.explain(vitx.load_model(detr_file), [CIRCLE, STAR], METHOD, score_threshold=0)


def test_a_detr_checkpoint_loads_as_a_detector(detr_file):
    model = vitx.load_model(str(detr_file))
    assert model.detector and model.config.kind == "detr" and model.config.class_names == CLASS_NAMES
    assert model.config.mean == (0.5,) * 3 and model.config.std == (0.25,) * 3
    net = save_detr(detr_file.with_name("again.safetensors"))   # the same seed: the same weights
    x = torch.randn(2, 3, 64, 64)
    logits, boxes = model.detect(x)
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(boxes, expected[1])


def test_overlay_frames_the_box_and_labels_class_and_score(exp, monkeypatch):
    drawn = []
    letter = vitx.viz.boxes.letter
    monkeypatch.setattr(vitx.viz.boxes, "letter", lambda sheet, texts: drawn.append(texts) or letter(sheet, texts))
    assert len(exp) == 16 and len(exp.objects) == 16     # 8 queries of each image
    i = 3
    o = exp.objects[i]
    picture = np.asarray(exp.overlay(i, scale=4)).astype(int)
    plain = np.asarray(overlay(exp.images[i], exp.maps[i], scale=4)).astype(int)
    assert np.array_equal(np.asarray(exp.overlay(i, scale=4, box=False)), plain)
    (texts,) = drawn
    assert [t[2] for t in texts] == [f"{o['class']} {probability(o['score'])}"]
    assert 10 <= texts[0][3] <= 11   # points: a 25th of 256 pixels
    x0, y0, x1, y1 = (round(v * 4) for v in o["box"])
    middle = (y0 + y1) // 2
    assert (picture[middle, x0] == 255).all() and (picture[middle, x1 - 1] == 255).all()   # the white frame
    assert (picture[middle, x0 - 1] == 0).all() and (picture[middle, x0 + 2] == 0).all()   # edged in black
    assert np.array_equal(picture[middle, x0 + 8:x1 - 8], plain[middle, x0 + 8:x1 - 8])     # the inside untouched
    tag = picture[:y0 - 2, x0:x1]          # the label's tag above the box: black text on white
    assert (tag == 255).all(-1).sum() > 200 and (tag.max(-1) < 80).sum() > 20
    changed = np.nonzero((picture != plain).any(-1))
    assert changed[0].min() >= y0 - 30 and changed[0].max() <= y1 + 2      # nothing drawn away from the object
    assert changed[1].min() >= x0 - 2 and changed[1].max() <= x1 + 2


def test_a_box_at_the_picture_edge_keeps_its_label_inside(exp):
    moved = dataclasses.replace(exp, objects=[{**o, "box": [0.0, 0.0, 64.0, 64.0]} for o in exp.objects])
    for scale in (1, 4):
        picture = np.asarray(moved.overlay(0, scale=scale)).astype(int)
        assert picture.shape == (64 * scale, 64 * scale, 3)
        assert (picture[:, 0] == 255).all() or (picture[:, 0] == 0).all(-1).any()   # frame on the border
        assert (picture[:12 * scale // 4 + 4, :40 * scale // 4].max(-1) < 80).any()  # the label inside, top left
    assert label_size(moved.overlay(0)) == 6.0


def test_box_needs_a_detector(detr_file, exp):
    vit = vitx.load_model(create_model("vitx_shapes", depth=1))
    classified = vitx.explain(vit, [CIRCLE], METHOD)
    assert classified.objects is None and classified.names() == ["1_circle"]
    with pytest.raises(VitxError, match="box=True needs a detector's explanation"):
        classified.overlay(0, box=True)


def test_names_are_one_per_object(detr_file, exp):
    stems = [f"{image}_q{o['query']}_{o['class']}" for o in exp.objects
             for image in [("1_circle", "18_star")[o["image"]]]]
    assert exp.names() == stems and len(set(stems)) == len(stems)
    assert exp.image_indices() == [o["image"] for o in exp.objects] == [0] * 8 + [1] * 8
    twice = vitx.explain(vitx.load_model(detr_file), [CIRCLE, CIRCLE], METHOD, target=[2])  # the same stem twice
    assert twice.names() == [f"{k:03d}_1_circle_q2_{o['class']}" for k, o in enumerate(twice.objects)]
    no_frames = dataclasses.replace(exp, frames=None)
    assert no_frames.names()[0] == f"000_q0_{exp.objects[0]['class']}" and no_frames.names()[8].startswith("001_q0_")
    assert object_stem("scene", 3, "traffic light") == "scene_q3_traffic-light"
    assert object_stem("scene", 0, "a/b") == "scene_q0_a-b"


def test_save_writes_each_objects_files_and_objects_json(exp, tmp_path):
    written = exp.save(tmp_path, scale=4)
    names = exp.names()
    files = {f"{name}_{METHOD}{end}" for name in names for end in (".png", ".npy")}
    assert {p.name for p in tmp_path.iterdir()} == files | {"objects.json"}
    assert {p.name for p in written} == files | {"objects.json"}
    rows = json.loads((tmp_path / "objects.json").read_text())
    assert [{k: row[k] for k in exp.objects[0]} for row in rows] == exp.objects
    assert [row["name"] for row in rows] == names
    assert [row["image_name"] for row in rows] == ["1_circle"] * 8 + ["18_star"] * 8
    for i, row in enumerate(rows):
        assert row["files"] == [f"{names[i]}_{METHOD}.png", f"{names[i]}_{METHOD}.npy"]
        np.testing.assert_array_equal(np.load(tmp_path / row["files"][1]), exp.maps[i].numpy())
        from PIL import Image
        assert np.array_equal(np.asarray(Image.open(tmp_path / row["files"][0])), np.asarray(exp.overlay(i, scale=4)))
    # a second method's save into the same folder: each object's row lists both methods' files
    dataclasses.replace(exp, method="saliency").save(tmp_path)
    rows = json.loads((tmp_path / "objects.json").read_text())
    assert len(rows) == 16 and rows[0]["files"] == [f"{names[0]}_{m}{end}" for m in (METHOD, "saliency")
                                                    for end in (".png", ".npy")]


def test_the_object_index_keeps_other_objects_and_replaces_a_broken_file(tmp_path):
    path = tmp_path / "objects.json"
    path.write_text("not json")
    update_object_index(path, [{"name": "a_q0_circle", "score": 0.5, "files": ["a.png"]}])
    update_object_index(path, [{"name": "b_q1_star", "score": 0.7, "files": ["b.png"]},
                               {"name": "a_q0_circle", "score": 0.6, "files": ["a2.png", "a.png"]}])
    assert json.loads(path.read_text()) == [{"name": "a_q0_circle", "score": 0.6, "files": ["a.png", "a2.png"]},
                                            {"name": "b_q1_star", "score": 0.7, "files": ["b.png"]}]


def test_no_object_saves_nothing(detr_file, tmp_path):
    with pytest.warns(UserWarning, match="no detection with a score above 1"):
        empty = vitx.explain(vitx.load_model(detr_file), [CIRCLE], METHOD, score_threshold=1.0)
    assert len(empty) == 0 and empty.objects == [] and empty.names() == []
    assert empty.save(tmp_path / "out") == [] and not (tmp_path / "out").exists()


def test_save_refuses_names_that_clash(exp, tmp_path):
    with pytest.raises(VitxError, match="two objects have the same name"):
        exp.save(tmp_path / "out", names=["same"] * len(exp))
    with pytest.raises(VitxError, match="got 2 names for 16 objects"):
        exp.save(tmp_path / "out", names=["a", "b"])
    assert not (tmp_path / "out").exists()


def test_grid_frames_each_rows_box(exp):
    images, maps = exp.images[:2], {METHOD: exp.maps[:2]}
    boxes = [[16.0, 16.0, 48.0, 48.0], [0.0, 0.0, 32.0, 32.0]]
    framed = np.asarray(grid(images, maps, ["a", "b"], boxes=boxes, colorbar=False)).astype(int)
    plain = np.asarray(grid(images, maps, ["a", "b"], colorbar=False)).astype(int)
    assert framed.shape == plain.shape
    changed = (framed != plain).any(-1)
    cell, gap = 180, 4
    left = cell + gap                     # the label panel, then the image column
    header = np.nonzero(changed.any(1))[0].min()
    assert not changed[:, :left].any()    # labels untouched
    # row 0: the box's left edge at 16/64 of the cell, in the image and in the overlay, white
    column = left + 45
    rows = np.nonzero(changed[:, column])[0]
    assert len(rows) > 80 and (framed[rows[len(rows) // 2], column] == 255).all()
    assert changed[header:header + 100, left + cell + gap + 45].any()
