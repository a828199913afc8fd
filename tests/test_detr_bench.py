"""``vitx bench`` on detectors: the weak-segmentation scores of per-object maps (the authors' Otsu and upsampling, IoU,
pixel accuracy, COCO segmentation AP over IoU 0.2:0.95, matching, per-object pointing and pairwise class sensitivity)
on hand-made maps and masks whose answers are known; the benchmark on an untrained tiny detector; bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitx
from vitx.cli import benching, main
from vitx.data import shapes
from vitx.data.detection import coco_ground_truth, object_boxes
from vitx.data.shapes import CLASS_NAMES, ShapesData
from vitx.errors import VitxError
from vitx.evaluate import evaluate
from vitx.evaluate_objects import evaluate_objects
from vitx.metrics import OBJECT_METRICS, match_objects, object_scores, otsu_masks, segmentation_ap
from vitx.metrics.objects import IOU_THRESHOLDS, MEDIUM_MAX, SMALL_MAX, object_truth
from vitx.models import create_model
from vitx.objects import find_objects

SEED = 40_000  # fresh images: the detector trains on data seeds >= 1,000,000


def block(rows: slice, cols: slice, size: int = 8) -> torch.Tensor:
    out = torch.zeros(size, size)
    out[rows, cols] = 1
    return out


def scene(*objects: tuple[int, slice, slice]) -> ShapesData:
    """One 64-pixel image holding objects (class, pixel rows, pixel columns)."""
    labels, masks = torch.zeros(1, len(CLASS_NAMES)), torch.zeros(1, len(CLASS_NAMES), 64, 64, dtype=torch.bool)
    for c, rows, cols in objects:
        labels[0, c] = 1
        masks[0, c, rows, cols] = True
    return ShapesData(torch.zeros(1, 3, 64, 64), labels, masks, CLASS_NAMES, "multi", 0)


def truth_of(data: ShapesData, labels, scores, boxes, min_iou=0.5):
    n = len(labels)
    return object_truth(torch.zeros(n, dtype=torch.long), torch.tensor(labels), torch.tensor(scores),
                        torch.tensor(boxes, dtype=torch.float32), object_boxes(data), coco_ground_truth(data), min_iou)


def pixels(token_maps: torch.Tensor) -> torch.Tensor:
    return F.interpolate(token_maps[:, None], size=(64, 64), mode="nearest")[:, 0]


def test_otsu_splits_a_two_level_map_and_upsamples_as_the_authors():
    grid = block(slice(2, 4), slice(2, 4)) * 5 + 1                  # two levels: 1 around, 6 on tokens (2-3, 2-3)
    nearest = otsu_masks(grid[None], (64, 64), upsample="nearest")[0]
    assert torch.equal(nearest, pixels(block(slice(2, 4), slice(2, 4))[None])[0].bool())
    # DETR's PostProcessSegm: bilinear (align_corners=False) of the 0/255 mask, foreground above 0: a pixel whose
    # nearest token centres (4 + 8k) include a foreground token, so pixels 12..35 on each axis
    authors = otsu_masks(grid[None], (64, 64))[0]
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[12:36, 12:36] = True
    assert torch.equal(authors, expected)
    assert not otsu_masks(torch.full((1, 8, 8), 3.0), (64, 64)).any()     # a constant map segments nothing


def test_otsu_equals_the_authors_opencv_call():
    cv2 = pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(200, 8, 8, generator=generator) ** torch.randint(1, 5, (200, 1, 1), generator=generator)
    ours = otsu_masks(maps, (8, 8), upsample="nearest").numpy()
    for cam, mine in zip(maps, ours):                                 # DETR/mask_generator.py, line by line
        cam = (cam - cam.min()) / (cam.max() - cam.min()) * 255
        _, th = cv2.threshold(cam.numpy().astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert np.array_equal(th > 0, mine)


def test_iou_and_pixel_accuracy_of_known_masks():
    data = scene((3, slice(16, 32), slice(24, 40)))                   # 16 x 16 object
    truth = truth_of(data, [3], [0.9], [[24, 16, 40, 32]])
    tokens = block(slice(2, 4), slice(2, 4))[None]                    # predicted: pixels 16..31 x 16..31
    scores = object_scores(pixels(tokens), tokens, truth, upsample="nearest")
    assert scores["iou"].tolist() == pytest.approx([128 / 384])       # 16 x 8 shared, 384 in the union
    assert scores["pixel_accuracy"].tolist() == pytest.approx([1 - 256 / 4096])
    assert scores["pointing"].tolist() == [0.75]    # of the tied peak's columns 16..31, 20..31 lie within 4.3 px
    assert scores["class_sensitivity"].numel() == 0                   # no other object in the image


def test_segmentation_ap_on_a_known_case():
    data = scene((3, slice(16, 48), slice(16, 48)))                   # 32 x 32: a large object
    right, empty = block(slice(2, 5), slice(2, 5)), torch.zeros(8, 8)
    predicted = pixels(torch.stack([right, empty])).bool()            # IoU 9/16 = 0.5625, and 0
    box = [16, 16, 48, 48]
    # the good mask scores higher: it is a hit at IoU thresholds 0.2 ... 0.55, 8 of the 16, and precision 1 there
    truth = truth_of(data, [3, 3], [0.9, 0.8], [box, box])
    assert segmentation_ap(predicted, truth) == pytest.approx({"ap": 0.5, "ap_small": float("nan"),
                                                               "ap_medium": float("nan"), "ap_large": 0.5}, nan_ok=True)
    # the empty mask ranked first: precision 1/2 at full recall
    truth = truth_of(data, [3, 3], [0.8, 0.9], [box, box])
    assert segmentation_ap(predicted, truth)["ap"] == pytest.approx(0.25)
    assert len(IOU_THRESHOLDS) == 16 and IOU_THRESHOLDS[0] == 0.2 and IOU_THRESHOLDS[-1] == 0.95


def test_sizes_split_by_mask_area():
    small = scene((1, slice(0, 12), slice(0, 12)), (3, slice(32, 46), slice(32, 48)), (5, slice(0, 32), slice(40, 64)))
    areas = [144 / 4096, 224 / 4096, 768 / 4096]
    assert areas[0] <= SMALL_MAX < areas[1] <= MEDIUM_MAX < areas[2]
    masks = small.masks[0, [1, 3, 5]]
    truth = truth_of(small, [1, 3, 5], [0.9, 0.9, 0.9], object_boxes(small)[0]["boxes"].tolist())
    ap = segmentation_ap(masks, truth)                                # every object segmented exactly
    assert ap == pytest.approx({"ap": 1.0, "ap_small": 1.0, "ap_medium": 1.0, "ap_large": 1.0})
    missed = segmentation_ap(masks & torch.tensor([True, True, False])[:, None, None], truth)
    assert missed == pytest.approx({"ap": 2 / 3, "ap_small": 1.0, "ap_medium": 1.0, "ap_large": 0.0})


def test_detections_match_the_object_of_their_class_they_overlap():
    data = scene((3, slice(16, 48), slice(16, 48)), (5, slice(0, 16), slice(0, 16)))
    boxes = torch.tensor([[16, 16, 48, 48], [20, 16, 52, 48], [16, 16, 48, 48], [40, 40, 60, 60], [0, 0, 16, 16]])
    labels = torch.tensor([3, 3, 5, 3, 5])
    found = match_objects(torch.zeros(5, dtype=torch.long), labels, boxes, object_boxes(data))
    assert found.tolist() == [0, 0, -1, -1, 1]       # class 5's box is elsewhere; IoU 64/1360 is too little
    assert match_objects(torch.zeros(5, dtype=torch.long), labels, boxes, object_boxes(data), 0.0).tolist() == \
        [0, 0, -1, 0, 1]


def test_pointing_and_class_sensitivity_per_object_and_pair():
    data = scene((3, slice(16, 32), slice(16, 32)), (5, slice(40, 56), slice(40, 56)), (6, slice(0, 8), slice(48, 64)))
    boxes = object_boxes(data)[0]["boxes"].tolist()
    truth = truth_of(data, [3, 5, 1], [0.9, 0.9, 0.9], [boxes[0], boxes[1], boxes[0]])
    maps = torch.zeros(3, 64, 64)
    maps[0, 20, 20] = 2            # on object 3: its peak inside, and more on it than on 5 or 6
    maps[1, 20, 20] = 2            # object 5's map peaks on object 3: a miss, and 3 gets more than 5
    scores = object_scores(maps, F.adaptive_avg_pool2d(maps[:, None], 8)[:, 0], truth)
    assert truth.matched.tolist() == [True, True, False]
    assert scores["pointing"].tolist() == [1.0, 0.0]
    assert scores["class_sensitivity"].tolist() == [1.0, 1.0, 0.0, 0.0]   # 3 > 5, 3 > 6; 5 < 3, 5 = 6 (a tie fails)


def tiny_detector():
    torch.manual_seed(0)
    return vitx.model.wrap(create_model("detr_shapes", encoder_layers=1, decoder_layers=1).eval(), mean=(0.5,) * 3,
                           std=(0.25,) * 3)


def test_the_benchmark_on_an_untrained_detector():
    model, data = tiny_detector(), shapes(n=4, seed=SEED, variant="multi")
    methods = ["generic-attention", "raw-attention", "saliency", "random", "ground-truth"]   # saliency: pixel maps
    evaluation = evaluate_objects(model, data, methods, score_threshold=0.0, match_iou=0.0, batch_size=3)
    results = evaluation.results
    found = find_objects(model, model.normalize(data.images), None, 0.0, 32)
    assert results["objects"] == len(found) > 0 and results["variant"] == "detr"
    assert results["ground_truth_objects"] == int(data.labels.sum())
    assert list(results["methods"]) == methods
    for name, row in results["methods"].items():
        assert set(OBJECT_METRICS) <= set(row), (name, row)
    oracle = results["methods"]["ground-truth"]
    assert oracle["object_pointing_tolerant"] == 1 and oracle["object_class_sensitivity"] == 1
    assert evaluation.gallery["generic-attention"].shape == (4, 64, 64)
    # one image at a time gives the same scores
    again = evaluate_objects(model, data, ["generic-attention"], score_threshold=0.0, match_iou=0.0, batch_size=1)
    for metric in OBJECT_METRICS:
        assert again.results["methods"]["generic-attention"][metric] == \
            pytest.approx(results["methods"]["generic-attention"][metric], nan_ok=True), metric


def confident(model, label: int):
    """The detector with its class head biased so that every query finds ``label`` with a score near 1."""
    with torch.no_grad():
        model.net.class_head.bias.zero_()
        model.net.class_head.bias[label] = 20
    return model


def test_bench_command_on_an_untrained_detector(tmp_path, monkeypatch, capsys):
    model = confident(tiny_detector(), 3)
    monkeypatch.setattr(benching, "load_model", lambda *args, **kwargs: model)
    out = tmp_path / "bench"
    argv = ["bench", "--model", "shapes-detr", "--methods", "generic-attention,random,ground-truth", "--n", "3",
            "--seed", str(SEED), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    board = (out / "leaderboard.md").read_text()
    assert board.startswith(f"`vitx bench --model shapes-detr --methods generic-attention,random,ground-truth --n 3 "
                            f"--seed {SEED} --out {out}`\n\n3 multi-object shapes images")
    header = next(line for line in board.splitlines() if line.startswith("| method"))
    assert [cell.split()[0] for cell in header.strip("| ").split(" | ")][1:] == [*OBJECT_METRICS, "objects/s"]
    results = json.loads((out / "results.json").read_text())
    assert results["objects"] == 3 * 8 and results["score_threshold"] == 0.5
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.csv", "leaderboard.md", "gallery.png",
                                               "report.html"}
    assert main([*argv, "--resume"]) == 0        # every row comes back from the previous run
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]
    lower = tmp_path / "lower"
    assert main([*argv[:-1], str(lower), "--score-threshold", "0.25"]) == 0
    assert "--score-threshold 0.25" in (lower / "leaderboard.md").read_text()
    assert json.loads((lower / "results.json").read_text())["score_threshold"] == 0.25


def one_line_error(call) -> str:
    with pytest.raises(VitxError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_input_is_one_line(tmp_path, monkeypatch):
    model, data = tiny_detector(), shapes(n=2, seed=SEED, variant="multi")
    assert "variant='multi'" in one_line_error(lambda: evaluate(model, shapes(n=2, seed=SEED)))
    assert "match_iou" in one_line_error(lambda: evaluate_objects(model, data, match_iou=1.5))
    assert "upsampling" in one_line_error(lambda: evaluate_objects(model, data, upsample="cubic"))
    assert "unknown metric 'miou' for detectors" in one_line_error(lambda: evaluate(model, data, metrics=["miou"]))
    assert "score_threshold" in one_line_error(lambda: evaluate(model, data, score_threshold=2))
    assert "no object with a score above 1" in one_line_error(lambda: evaluate(model, data, score_threshold=1.0))
    classifier = vitx.model.wrap(create_model("vitx_shapes", depth=1).eval())
    assert "model is not a detector" in one_line_error(lambda: evaluate(classifier, data, score_threshold=0.5))
    refused = tmp_path / "classifier"
    assert main(["bench", "--model", "shapes-vit", "--score-threshold", "0.5", "--out", str(refused)]) == 2
    assert not refused.exists()
    monkeypatch.setattr(benching, "load_model", lambda *args, **kwargs: model)
    out = tmp_path / "none"
    assert main(["bench", "--model", "shapes-detr", "--n", "2", "--out", str(out)]) == 2   # nothing detected
    assert not out.exists()
