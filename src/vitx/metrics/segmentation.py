"""Segmentation scores of a relevance map against the object mask, by the ImageNet-segmentation protocol
of Chefer, Gur & Wolf (CVPR 2021, Transformer Interpretability Beyond Attention Visualization)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import as_maps, as_masks, nonempty


def segmentation(maps, masks) -> dict[str, torch.Tensor]:
    """Pixel accuracy, mIoU and mAP of each map as a foreground segmentation; a dict of (B,) floats.

    Protocol (Chefer et al. 2021, their ``imagenet_seg_eval.py``): scale the map to [0, 1],
    r = (m - min m) / (max m - min m) (a constant map becomes 0); predict foreground where r > mean(r).

    - ``pixel_accuracy`` = |{p : prediction_p = mask_p}| / (H·W);
    - ``miou`` = (IoU(foreground) + IoU(background)) / 2, IoU(c) = |pred_c ∩ true_c| / |pred_c ∪ true_c|;
    - ``map`` = average precision AP = Σ_n (R_n − R_{n−1}) P_n (scikit-learn's ``average_precision_score``)
      of the 2·H·W scores of both classes pooled, as the reference code does: r_p scores pixel p as
      foreground (positive where mask_p), 1 − r_p scores it as background (positive where not mask_p).

    All three: higher is better, at most 1. The paper pools intersections, unions and pixel counts over
    the whole dataset before dividing; vitx returns per-image values (their mean is not exactly the pooled
    ratio) so that standard errors can be taken. Masks must not be empty.
    """
    maps = as_maps(maps)
    masks = nonempty(as_masks(masks, maps))
    flat, truth = maps.flatten(1).double(), masks.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scaled = (flat - low) / (high - low).clamp(min=1e-12)
    predicted = scaled > scaled.mean(1, keepdim=True)
    accuracy = (predicted == truth).double().mean(1)
    ious = [(p & t).sum(1).double() / (p | t).sum(1).double().clamp(min=1)
            for p, t in ((predicted, truth), (~predicted, ~truth))]
    ap = average_precision(torch.cat([scaled, 1 - scaled], 1), torch.cat([truth, ~truth], 1))
    dtype = maps.dtype
    return {"pixel_accuracy": accuracy.to(dtype), "miou": ((ious[0] + ious[1]) / 2).to(dtype), "map": ap.to(dtype)}


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, AP = Σ_n (R_n − R_{n−1}) P_n over the distinct score thresholds, highest first (equal
    scores form one threshold), as ``sklearn.metrics.average_precision_score``; (B, n) -> (B,) float64.
    A row without positives gets 0."""
    scores, labels = scores.double(), labels.bool()
    ordered, order = scores.sort(dim=1, descending=True, stable=True)
    hits = labels.gather(1, order).double()
    tp = hits.cumsum(1)
    precision = tp / torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float64)
    # every item takes the precision at the end of its group of tied scores (the threshold it belongs to)
    negated = -ordered                                         # ascending
    group_end = torch.searchsorted(negated.contiguous(), negated.contiguous(), right=True) - 1
    positives = hits.sum(1)
    return (hits * precision.gather(1, group_end)).sum(1) / positives.clamp(min=1)


def object_patches(masks: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Pixel masks (B, H, W) -> patch masks (B, gh, gw): a patch is object when more than half its pixels are."""
    return F.avg_pool2d(masks[:, None].float(), patch, patch)[:, 0] > 0.5


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jaccard index of boolean masks over their last two dims (1 where both are empty)."""
    inter, union = (a & b).sum((-2, -1)).float(), (a | b).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
