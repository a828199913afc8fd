"""Issue 14's gates on the zoo's trained detector, on fresh images (data seed 30,000, never used in training)."""
import pytest
import torch

import vitx
from vitx.data.detection import coco_ground_truth
from vitx.training.detr import detections
from vitx.metrics.detection import coco_ap, coco_detections

SEED, IMAGES = 30_000, 300


@pytest.fixture(scope="module")
def detr():
    return vitx.load_model("shapes-detr")


@pytest.fixture(scope="module")
def data():
    return vitx.data.shapes(IMAGES, seed=SEED, variant="multi")


@pytest.fixture(scope="module")
def generic(detr, data):
    return vitx.evaluate(detr, data, ["generic-attention"]).results


@torch.no_grad()
def test_the_detector_finds_the_objects(detr, data):
    """AP50 >= 0.9 on 300 fresh images (the card's 0.993 is on 1,000 others), COCO AP reported beside it."""
    logits, boxes = detr.detect(detr.normalize(data.images))
    scores = coco_ap(coco_ground_truth(data), coco_detections(*detections(logits, boxes, data.images.shape[-1])))
    assert scores["ap50"] >= 0.9, scores
    assert scores["ap"] >= 0.6, scores


def test_generic_attention_points_inside_the_explained_object(generic):
    """Zhang et al.'s tolerant pointing game (15 px per 224 px) inside the explained object's mask: >= 90%."""
    assert generic["unmatched"] <= 0.02 * generic["objects"]
    assert generic["methods"]["generic-attention"]["object_pointing_tolerant"] >= 0.9


def test_generic_attention_is_class_sensitive(generic):
    """Object A's map puts more relevance on A than on each other object of its image in >= 90% of the pairs."""
    assert generic["methods"]["generic-attention"]["object_class_sensitivity"] >= 0.9


@pytest.mark.xfail(strict=True, reason="measured 0.371 mean IoU (seed 30,000, 300 images, 763 detections): the authors' "
                   "protocol thresholds the 8x8 token grid, where an object is about 2.5 tokens wide, and the objects' "
                   "own masks pooled to that grid reach only 0.367 under it (docs/detection.md)")
def test_generic_attention_segments_the_objects(generic):
    assert generic["methods"]["generic-attention"]["object_iou"] >= 0.5
