"""Scores of a detector's per-object maps as weak segmentation, by the protocol of Chefer, Gur & Wolf (ICCV 2021,
Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers, Sec. 4 on DETR;
their code: ``DETR/mask_generator.py`` thresholds, DETR's ``PostProcessSegm`` upsamples, ``engine.evaluate`` scores
with COCO's evaluation), plus the localisation scores of :mod:`vitx.metrics.localisation` per object.

Each explained detection is first matched to a ground-truth object of its image (:func:`match_objects`); the
per-object scores are taken over the matched detections only, while segmentation AP scores every detection, as a
detector's AP does. See docs/metrics.md, "Detectors".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VitxError
from .checks import as_maps, choice
from .detection import coco_evaluation
from .localisation import class_sensitivity, pointing_game_tolerant
from .registry import MetricInfo, compute_rows

# Object sizes of the multi-object shapes images, as a share of the image's area: the terciles of the object masks'
# areas, measured once on 2,000 images (vitx.data.shapes(2000, seed=12345, variant="multi"), 5,030 objects; the same
# at 128 pixels). Small: area <= 4.4% of the image (180 pixels at 64x64), medium: up to 6.2% (254), large: above.
SMALL_MAX, MEDIUM_MAX = 0.044, 0.062
SIZES = ("small", "medium", "large")
IOU_THRESHOLDS = np.round(np.linspace(0.2, 0.95, 16), 2)   # segmentation AP averaged over IoU 0.2, 0.25, ..., 0.95
MATCH_IOU = 0.5   # the least box IoU of a detection with the object it explains (COCO's AP50 criterion)
CHEFER_ICCV = "Chefer, Gur & Wolf, ICCV 2021"


def otsu_masks(token_maps, size: tuple[int, int], upsample: str = "authors") -> torch.Tensor:
    """The authors' segmentation of each map (B, gh, gw) on the token grid, as a (B, H, W) bool mask of pixels.

    1. min-max scale the map to [0, 255] and truncate to uint8: u = ⌊255 (m − min m) / (max m − min m)⌋ (their
       ``astype(np.uint8)``); a constant map gives an empty mask (theirs divides 0 by 0, which also ends empty);
    2. Otsu's threshold t of u (scikit-image's ``threshold_otsu``; the same threshold as their
       ``cv2.threshold(..., THRESH_BINARY + THRESH_OTSU)``): foreground where u > t, on the token grid;
    3. ``upsample="authors"``: to pixels as their evaluation does, through DETR's ``PostProcessSegm``: the 0/255
       mask bilinearly resized (``align_corners=False``) and foreground where sigmoid(value) > 0.5, i.e. value > 0,
       so a pixel is foreground when any of the (up to 2×2) tokens whose centres are nearest it is: a dilation by
       about half a patch (on 8×8 tokens of 64-pixel shapes, 2.6 times the objects' area even for a perfect
       token mask). ``"nearest"``: each pixel takes its own token's decision.
    """
    from skimage.filters import threshold_otsu

    choice(upsample, ("authors", "nearest"), "upsampling")
    maps = as_maps(token_maps, "token maps").detach()
    flat = maps.flatten(1).cpu().double()
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scaled = ((flat - low) / (high - low).clamp(min=1e-300) * 255).to(torch.uint8).numpy()
    grid = np.zeros(scaled.shape, bool)
    for row, (values, constant) in enumerate(zip(scaled, (high == low).flatten().tolist())):
        if not constant:
            grid[row] = values > threshold_otsu(values)
    grid = torch.from_numpy(grid).view(maps.shape).to(maps.device, torch.float32)[:, None]
    if upsample == "nearest":
        return F.interpolate(grid, size=tuple(size), mode="nearest")[:, 0] > 0
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[:, 0] > 0


def match_objects(image, label, box, truth: list[dict], min_iou: float = MATCH_IOU) -> torch.Tensor:
    """Per detection (its image index, class and (x0, y0, x1, y1) pixel box): the index of the ground-truth object
    of the same image and class whose box overlaps it most, among ``truth[image]["labels"]`` (as
    :func:`vitx.data.detection.object_boxes` lists them), when that box IoU is positive and at least ``min_iou``;
    else −1 (unmatched). Several detections may match one object. Returns (N,) long."""
    from torchvision.ops import box_iou

    found = torch.full((len(image),), -1, dtype=torch.long)
    for row, (i, c, b) in enumerate(zip(image.tolist(), label.tolist(), box.float().cpu())):
        objects = truth[i]
        ious = box_iou(b[None], objects["boxes"].float().cpu())[0]
        ious[objects["labels"].cpu() != c] = 0
        if len(ious) and ious.max() > 0 and ious.max() >= min_iou:
            found[row] = int(ious.argmax())
    return found


@dataclass(frozen=True)
class ObjectTruth:
    """The ground truth a run's detections are scored against. Per detection (N): ``image``, ``label``, ``score``,
    ``matched`` (bool) and ``masks`` (N, H, W), the matched object's mask (empty when unmatched); ``pairs`` (P, 2):
    (detection, other object's index in ``others``) for every matched detection and every other object of its
    image, with ``others`` (O, H, W) those masks; ``coco``: the images' ground truth in COCO's form."""
    image: torch.Tensor
    label: torch.Tensor
    score: torch.Tensor
    matched: torch.Tensor
    masks: torch.Tensor
    pairs: torch.Tensor
    others: torch.Tensor
    coco: dict


def object_truth(image, label, score, box, truth: list[dict], coco: dict, min_iou: float = MATCH_IOU) -> ObjectTruth:
    """The :class:`ObjectTruth` of detections (image, class, score, pixel box, each (N,) or (N, 4)) on images whose
    objects are ``truth`` (:func:`vitx.data.detection.object_boxes`) and ``coco``
    (:func:`vitx.data.detection.coco_ground_truth`)."""
    index = match_objects(image, label, box, truth, min_iou)
    size = truth[0]["masks"].shape[-2:]
    masks = torch.zeros(len(index), *size, dtype=torch.bool)
    pairs, others = [], []
    for row, (i, k) in enumerate(zip(image.tolist(), index.tolist())):
        if k < 0:
            continue
        masks[row] = truth[i]["masks"][k]
        for j in range(len(truth[i]["labels"])):
            if j != k:
                pairs.append((row, len(others)))
                others.append(truth[i]["masks"][j])
    others = torch.stack(others) if others else torch.zeros(0, *size, dtype=torch.bool)
    return ObjectTruth(image.cpu(), label.cpu(), score.cpu(), index >= 0, masks,
                       torch.tensor(pairs, dtype=torch.long).view(-1, 2), others.cpu(), coco)


def segmentation_ap(masks: torch.Tensor, truth: ObjectTruth) -> dict[str, float]:
    """Segmentation AP of the predicted masks (N, H, W) of all of ``truth``'s detections (each with its image, class
    and score) against every ground-truth object, by pycocotools' ``COCOeval(iouType="segm")`` with the IoU
    thresholds 0.2, 0.25, ..., 0.95 (:data:`IOU_THRESHOLDS`) and object-size ranges on the ground-truth mask area
    (:data:`SMALL_MAX`, :data:`MEDIUM_MAX`); otherwise COCO's defaults (per class, up to 100 detections per image, the
    101-point interpolated precision). {"ap", "ap_small", "ap_medium", "ap_large"}: the mean precision over IoU
    thresholds, recall points and classes present, as COCO's AP; NaN where no object has that size. The range
    0.2:0.95 is issue 14's account of the authors' paper; their ``engine.evaluate`` runs the same COCOeval, with
    COCO's 0.5:0.95 in the code as published (its override of ``iouThrs`` is commented out)."""
    from pycocotools import mask as rle

    area = masks.shape[-2] * masks.shape[-1]
    ranges = [[0, 1e10], [0, SMALL_MAX * area], [SMALL_MAX * area, MEDIUM_MAX * area], [MEDIUM_MAX * area, 1e10]]
    found = []
    encoded = rle.encode(np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8)))
    for code, i, c, s in zip(encoded, truth.image.tolist(), truth.label.tolist(), truth.score.tolist()):
        found.append({"image_id": i, "category_id": c + 1, "segmentation": code, "score": s})
    keys = ("ap", *(f"ap_{size}" for size in SIZES))
    if not found:
        return dict.fromkeys(keys, 0.0)
    evaluation = coco_evaluation(truth.coco, found, "segm", iouThrs=IOU_THRESHOLDS, areaRng=ranges,
                                 areaRngLbl=["all", *SIZES])
    precision = evaluation.eval["precision"][..., -1]    # (IoU thresholds, recall points, classes, sizes), 100 dets
    scores = {}
    for key, size in zip(keys, range(len(ranges))):
        values = precision[..., size]
        values = values[values > -1]
        scores[key] = float(values.mean()) if values.size else float("nan")
    return scores


def object_scores(maps, token_maps, truth: ObjectTruth, upsample: str = "authors") -> dict[str, torch.Tensor]:
    """Every detector score of one method's maps: ``maps`` (N, H, W) pixel maps and ``token_maps`` (N, gh, gw) the
    same on the token grid, one per detection of ``truth``. Per matched detection (M,): ``iou`` and
    ``pixel_accuracy`` of its :func:`otsu_masks` mask (``upsample``) against its object's mask, and ``pointing``, the
    tolerant pointing game (:func:`pointing_game_tolerant`) of its pixel map in that mask; per pair (P,) of a matched
    detection A and another object B of its image: ``class_sensitivity``, 1 when A's map has a higher mean value
    per pixel inside A's mask than inside B's (:func:`class_sensitivity` on the two masks), else 0; and the
    :func:`segmentation_ap` scores as (1,) tensors."""
    maps, token_maps = as_maps(maps), as_maps(token_maps, "token maps")
    if not maps.shape[0] == token_maps.shape[0] == len(truth.image):
        raise VitxError(f"{maps.shape[0]} maps and {token_maps.shape[0]} token maps for {len(truth.image)} "
                        "detections: give one of each per detection")
    predicted = otsu_masks(token_maps, maps.shape[-2:], upsample)
    matched = truth.matched.to(maps.device)
    pred, own = predicted[matched], truth.masks.to(maps.device)[matched]
    scores = {"iou": ((pred & own).flatten(1).sum(1) / (pred | own).flatten(1).sum(1).clamp(min=1)).float(),
              "pixel_accuracy": (pred == own).flatten(1).float().mean(1)}
    scores["pointing"] = pointing_game_tolerant(maps[matched], own) if matched.any() else maps.new_zeros(0)
    rows, other = truth.pairs.to(maps.device).unbind(1)
    both = torch.stack([truth.masks.to(maps.device)[rows], truth.others.to(maps.device)[other]], 1)
    scores["class_sensitivity"] = (class_sensitivity(maps[rows], both, torch.zeros_like(rows)) if len(rows)
                                   else maps.new_zeros(0))
    ap = segmentation_ap(predicted, truth)
    return scores | {key: torch.tensor([value]) for key, value in ap.items()}


_ARGS = ("maps", "token_maps", "truth", "upsample")
OBJECT_METRICS: dict[str, MetricInfo] = {row.name: row for row in (
    MetricInfo("object_iou", object_scores, _ARGS, "iou", True, CHEFER_ICCV + ", Otsu on the token grid"),
    MetricInfo("object_pixel_accuracy", object_scores, _ARGS, "pixel_accuracy", True,
               CHEFER_ICCV + ", Otsu on the token grid"),
    MetricInfo("segm_ap", object_scores, _ARGS, "ap", True, CHEFER_ICCV + ", COCO segm AP over IoU 0.2:0.95"),
    *(MetricInfo(f"segm_ap_{size}", object_scores, _ARGS, f"ap_{size}", True,
                 CHEFER_ICCV + f", COCO segm AP over IoU 0.2:0.95, {size} objects") for size in SIZES),
    MetricInfo("object_pointing_tolerant", object_scores, _ARGS, "pointing", True,
               "Zhang et al., ECCV 2016 / IJCV 2018, in the explained object's mask"),
    MetricInfo("object_class_sensitivity", object_scores, _ARGS, "class_sensitivity", True,
               "vitx; per pair of the explained object and another object of its image"),
)}


def compute_objects(names, raw: dict | None = None, **inputs) -> dict[str, torch.Tensor]:
    """Scores {name: values} of the metrics ``names`` (keys of :data:`OBJECT_METRICS`) from ``inputs`` (maps,
    token_maps, truth, upsample); they share one :func:`object_scores` call. ``raw`` receives its whole result."""
    return compute_rows(OBJECT_METRICS, names, {"upsample": "authors", **inputs}, raw, "detectors")
