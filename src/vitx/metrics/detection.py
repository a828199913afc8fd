"""Detection quality scored by COCO's own evaluation (pycocotools' COCOeval): average precision at IoU 0.5 and COCO's
AP averaged over IoU 0.5:0.95, of a detector's boxes against :func:`vitx.data.detection.coco_ground_truth`."""
from __future__ import annotations

import contextlib
import io

import torch


def coco_detections(scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor) -> list[dict]:
    """Detections in COCO's result form from per-image tensors (N, Q): score, class index, and (N, Q, 4) pixel boxes
    (x0, y0, x1, y1); image ids are the row indices."""
    found = []
    for i, (s, c, b) in enumerate(zip(scores.tolist(), labels.tolist(), boxes.tolist())):
        found += [{"image_id": i, "category_id": label + 1, "score": score,
                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]} for score, label, box in zip(s, c, b)]
    return found


def coco_evaluation(ground_truth: dict, results: list[dict], iou_type: str = "bbox", **params):
    """pycocotools' ``COCOeval`` of ``results`` (COCO's result form, not empty) against ``ground_truth`` (COCO's
    annotation form), its ``params`` set from the keyword arguments (e.g. ``iouThrs``), evaluated and accumulated,
    without COCO's progress printing."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = ground_truth
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iou_type)
        for name, value in params.items():
            setattr(evaluation.params, name, value)
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def coco_ap(ground_truth: dict, detections: list[dict], iou_type: str = "bbox") -> dict:
    """{"ap": AP at IoU 0.5:0.95, "ap50": AP at IoU 0.5, "ap75"} by COCOeval (up to 100 detections per image)."""
    if not detections:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    evaluation = coco_evaluation(ground_truth, detections, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.summarize()
    stats = evaluation.stats
    return {"ap": round(float(stats[0]), 4), "ap50": round(float(stats[1]), 4), "ap75": round(float(stats[2]), 4)}
