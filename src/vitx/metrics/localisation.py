"""Localisation: does the relevance fall on the target object? ``(maps, masks) -> (B,)`` per image.

``maps`` (B, H, W) are pixel relevance maps, higher = more relevant, any sign and scale; ``masks``
(B, H, W) are boolean ground truth of the target object (never empty). Ties between equal relevance
values are resolved by expectation: a score is its mean over every order of the tied pixels, so a
constant map scores exactly the chance level |mask| / (H·W) instead of a lucky or unlucky index.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import VitxError
from .checks import as_maps, as_masks, as_targets, nonempty

TOLERANCE = 15 / 224  # Zhang et al.'s pointing-game tolerance, as a share of the image side


def pointing_game(maps, masks, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing game (Zhang et al., ECCV 2016; IJCV 2018, Top-down Neural Attention by Excitation Backprop).

    hit = 1[dist(argmax_p m_p, mask) ≤ tolerance], distances in pixels between pixel centres; the default
    0 is the strict form (the peak inside the mask). Where several pixels share the maximum, the value is
    the share of them that hit (the expected hit when one of them is drawn at random). Higher is better;
    chance is |mask| / (H·W) when strict. Returns (B,) float.
    """
    maps = as_maps(maps)
    masks = nonempty(as_masks(masks, maps))
    if tolerance < 0:
        raise VitxError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance > 0:
        masks = dilate(masks, tolerance)
    flat, inside = maps.flatten(1), masks.flatten(1)
    peak = flat == flat.amax(1, keepdim=True)
    return (peak & inside).sum(1).float() / peak.sum(1).float()


def pointing_game_tolerant(maps, masks) -> torch.Tensor:
    """The pointing game with Zhang et al.'s tolerance, 15 pixels at their 224-pixel inputs, scaled to the
    maps' size: a hit is a peak within 15/224 of the larger image side of the mask. Returns (B,) float."""
    maps = as_maps(maps)
    return pointing_game(maps, masks, tolerance=TOLERANCE * max(maps.shape[-2:]))


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Every pixel whose centre lies within ``radius`` pixels of a mask pixel's centre, (B, H, W) bool."""
    r = int(radius)
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).float()
    return F.conv2d(masks[:, None].float(), disc[None, None], padding=r)[:, 0] > 0


def energy_pointing_game(maps, masks) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., CVPR-W 2020, Score-CAM).

    EPG = Σ_p max(m_p, 0)·mask_p / Σ_p max(m_p, 0): the share of the positive relevance that falls inside
    the mask. Negative relevance is ignored. A map with no positive value has no energy to place: its score
    is defined as 0 (the worst). Higher is better; a uniform positive map scores |mask| / (H·W).
    Returns (B,) float.
    """
    maps = as_maps(maps)
    masks = nonempty(as_masks(masks, maps))
    positive = maps.clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def relevance_rank_accuracy(maps, masks) -> torch.Tensor:
    """Relevance rank accuracy (Arras, Osman & Samek, Information Fusion 2022, CLEVR-XAI).

    With K = |mask| and P_K the K pixels of highest relevance, RRA = |P_K ∩ mask| / K. Pixels tied with the
    K-th highest value share the remaining places in expectation. Higher is better; chance is K / (H·W).
    Returns (B,) float.
    """
    maps = as_maps(maps)
    masks = nonempty(as_masks(masks, maps))
    flat, inside = maps.flatten(1), masks.flatten(1)
    k = inside.sum(1)
    ordered = flat.sort(1, descending=True).values
    kth = ordered.gather(1, (k - 1)[:, None])                  # the K-th highest value
    above, tied = flat > kth, flat == kth
    places = (k - above.sum(1)).float()                        # places left for the tied pixels
    hits = (above & inside).sum(1).float() + places * (tied & inside).sum(1).float() / tied.sum(1).float()
    return hits / k.float()


def class_sensitivity(maps, masks, targets) -> torch.Tensor:
    """Class sensitivity on images with several objects: vitx's quantitative form of the property that an
    explanation should change with the class explained (Rebuffi et al., CVPR 2020, There and Back Again;
    the class-specific maps of Chefer, Gur & Wolf, CVPR 2021).

    ``masks`` (B, C, H, W): one mask per class; the classes present in an image are those whose mask is not
    empty, and the target's own mask must not be. With μ_c = mean relevance per pixel inside class c's mask
    (a mean, not a total, because objects differ in area), the score of an explanation for target t is
    |{b present, b ≠ t : μ_t > μ_b}| / |{b present, b ≠ t}|: the share of the other objects that get less
    relevance per pixel than the target (ties count as failures). Higher is better; a map that ignores the
    target scores about 0.5 at random. NaN for an image with no other class present. Returns (B,) float.
    """
    maps = as_maps(maps)
    masks = as_masks(masks, maps, multi=True)
    B, C = masks.shape[:2]
    targets = as_targets(targets, B, C, maps.device)
    flat = masks.flatten(2)                                    # (B, C, HW)
    area = flat.sum(2)
    present = area > 0
    if not present[torch.arange(B, device=maps.device), targets].all():
        bad = int((~present[torch.arange(B, device=maps.device), targets]).nonzero()[0])
        raise VitxError(f"the mask of target class {int(targets[bad])} in image {bad} is empty")
    energy = (flat.to(maps.dtype) * maps.flatten(1)[:, None]).sum(2)
    mean = energy / area.clamp(min=1).to(maps.dtype)           # (B, C)
    own = mean.gather(1, targets[:, None])
    others = present.clone()
    others[torch.arange(B, device=maps.device), targets] = False
    wins = ((own > mean) & others).sum(1).float()
    count = others.sum(1).float()
    return torch.where(count > 0, wins / count.clamp(min=1), torch.full_like(count, float("nan")))
