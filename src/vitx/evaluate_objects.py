"""``vitx.evaluate`` on a detector (DETR-like): every method explains every detection of the same multi-object
``vitx.data.shapes`` images, and each object's map is scored as a weak segmentation of that object
(:mod:`vitx.metrics.objects`).

The detections are found once (:func:`vitx.objects.find_objects`, score above ``score_threshold``) and every method
explains those, given as its ``target`` (``normalize=False``), without running the detector again. Reference rows: ``random`` (uniform noise per pixel)
and ``ground-truth`` (the matched object's mask; an empty map for an unmatched detection). Pixel maps are averaged
over each patch to give the token-grid map that the authors' thresholding reads.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from .data.detection import coco_ground_truth, object_boxes
from .data.shapes import ShapesData
from .errors import VitxError
from .evaluate import Evaluation, checked_run, score_methods
from .explain import explain
from .metrics.checks import choice
from .metrics.objects import MATCH_IOU, MEDIUM_MAX, SMALL_MAX, compute_objects, object_truth
from .objects import DEFAULT_THRESHOLD, find_objects


def evaluate_objects(model, data: ShapesData, methods="all", metrics=None, *, params: dict | None = None,
                     batch_size: int = 32, seed: int = 0, gallery: int = 4, score_threshold: float | None = None,
                     match_iou: float = MATCH_IOU, upsample: str = "authors", previous: Evaluation | None = None,
                     progress: bool = False, scored: Callable[[Evaluation], None] | None = None) -> Evaluation:
    """:func:`vitx.evaluate` for a loaded detector on multi-object ``data`` (its arguments, bar ``sanity_images``).
    ``score_threshold`` picks the detections (default 0.5); ``match_iou`` is the least box IoU at which a detection
    explains the ground-truth object of its class (:func:`vitx.metrics.objects.match_objects`); ``upsample`` how the
    token-grid segmentation reaches the pixels (:func:`vitx.metrics.objects.otsu_masks`). ``results`` also holds
    ``objects`` (detections explained), ``unmatched`` (those matched to no object: left out of the per-object scores,
    counted as false positives by the segmentation AP), ``ground_truth_objects``, ``score_threshold``, ``match_iou``,
    ``upsample`` and ``size_thresholds`` (the small and medium objects' largest mask area, as a share of the image)."""
    if not isinstance(data, ShapesData) or data.variant != "multi":
        raise VitxError("a detector is evaluated on multi-object images: vitx.data.shapes(..., variant='multi')")
    if tuple(data.class_names) != tuple(model.config.class_names):
        raise VitxError(f"the detector's classes {model.config.class_names} are not the shapes data's "
                        f"{tuple(data.class_names)}: evaluate a detector trained on that data")
    if not 0 <= match_iou <= 1:
        raise VitxError(f"match_iou must be in [0, 1], got {match_iou}")
    choice(upsample, ("authors", "nearest"), "upsampling")
    names, metric_names, params = checked_run(model, data, methods, metrics, params, batch_size)
    x = model.normalize(data.images.to(model.device))
    threshold = DEFAULT_THRESHOLD if score_threshold is None else score_threshold
    with warnings.catch_warnings():          # no detection is this function's error, not a warning
        warnings.simplefilter("ignore")
        found = find_objects(model, x, None, threshold, batch_size)
    if not len(found):
        raise VitxError(f"the detector finds no object with a score above {threshold:g} in the {len(data)} images: "
                        "nothing to score (lower the score threshold, or check the model)")
    true_objects = object_boxes(data)
    truth = object_truth(found.image, found.label, found.score, found.box, true_objects, coco_ground_truth(data),
                         match_iou)
    layout = model.layout(x[:1])
    results = {"model": model.config.name or type(model.net).__name__, "n": len(data), "seed": seed,
               "data_seed": data.seed, "variant": "detr", "explanations": len(found), "sanity_explanations": 0,
               "objects": len(found), "unmatched": int((~truth.matched).sum()),
               "ground_truth_objects": sum(len(o["labels"]) for o in true_objects), "score_threshold": threshold,
               "match_iou": match_iou, "upsample": upsample, "size_thresholds": [SMALL_MAX, MEDIUM_MAX],
               "methods": {}}
    evaluation = Evaluation(results, images=data.images[found.image[:gallery]].clone(),
                            targets=found.label[:gallery].clone(), class_names=tuple(model.config.class_names))
    size = x.shape[-2:]

    def explained(name: str, settings: dict, count: int) -> dict:
        count = min(count, len(found))
        if name == "random":
            maps = torch.rand((count, *size), generator=torch.Generator().manual_seed(seed)).to(x.device)
        elif name == "ground-truth":
            maps = truth.masks[:count].float().to(x.device)
        else:
            exp = explain(model, x, name, target=found[:count], batch_size=batch_size, normalize=False,
                          **settings)
            maps = exp.maps
            if exp.token_maps is not None:
                return {"maps": maps, "token_maps": exp.token_maps}
        return {"maps": maps, "token_maps": F.adaptive_avg_pool2d(maps[:, None], layout.grid)[:, 0]}

    def scored_objects(name: str, settings: dict, maps: dict, group: list[str]) -> tuple[dict, dict]:
        raw = {}
        return compute_objects(group, raw=raw, maps=maps["maps"], token_maps=maps["token_maps"], truth=truth,
                               upsample=upsample), raw

    score_methods(evaluation, model, names, metric_names, params, len(found), gallery, seed, explained,
                  scored_objects, previous, progress, scored)
    return evaluation


__all__ = ["evaluate_objects"]
