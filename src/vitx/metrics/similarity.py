"""Similarity of two batches of maps, image by image: rank correlation and structural similarity."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import VitxError
from ..scaling import minmax
from .checks import as_maps


def spearman(a, b) -> torch.Tensor:
    """Spearman rank correlation ρ of each pair of maps (B, H, W): the Pearson correlation of their
    ranks, ties given their average rank (as ``scipy.stats.spearmanr``). NaN where a map is constant.
    Returns (B,) float64."""
    a, b = _pair(a, b)
    ra, rb = _ranks(a.flatten(1).double()), _ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / ((ra * ra).sum(1) * (rb * rb).sum(1)).sqrt()


def ssim(a, b, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of each pair of maps (B, H, W), each map
    first min-max scaled to [0, 1] (a constant map becomes 0), with data range 1, as
    ``skimage.metrics.structural_similarity(a, b, data_range=1)`` computes it: uniform ``win_size`` ×
    ``win_size`` windows, sample covariances, K1 = 0.01, K2 = 0.03, averaged over the windows that lie
    inside the image. Maps must be at least ``win_size`` pixels on each side. Returns (B,) float64."""
    a, b = _pair(a, b)
    if win_size < 3 or win_size % 2 == 0:
        raise VitxError(f"win_size must be an odd integer of at least 3, got {win_size!r}")
    if min(a.shape[-2:]) < win_size:
        raise VitxError(f"SSIM needs maps of at least {win_size}x{win_size} pixels, got {a.shape[1]}x{a.shape[2]}")
    a, b = minmax(a.double())[:, None], minmax(b.double())[:, None]
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731  windows inside the image only
    ux, uy = mean(a), mean(b)
    cov_norm = win_size ** 2 / (win_size ** 2 - 1)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_maps(a, "first maps"), as_maps(b, "second maps")
    if a.shape != b.shape:
        raise VitxError(f"maps to compare differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b.to(a.device)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1, ties averaged."""
    ordered = values.sort(1).values.contiguous()
    values = values.contiguous()
    below = torch.searchsorted(ordered, values)
    upto = torch.searchsorted(ordered, values, right=True)
    return (below + upto + 1).double() / 2
