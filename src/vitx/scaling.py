"""Per-map scaling shared by explain(), the metrics and the methods that build masks, and the screen that
keeps broken maps out of results."""
from __future__ import annotations

import torch

CONSTANT = 1e-6   # a map whose range is within this fraction of its largest magnitude is constant (float rounding)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (dim 0 indexes the maps) to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)


def minmax_tokens(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale each row of ``maps`` (B, L) to [0, 1] over its tokens (``mask`` True); padding gets 0."""
    low = maps.masked_fill(~mask, float("inf")).amin(1, keepdim=True)
    high = maps.masked_fill(~mask, float("-inf")).amax(1, keepdim=True)
    return ((maps - low) / (high - low).clamp(min=1e-12)).masked_fill(~mask, 0.0)


def screen(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps, degenerate): each map (dim 0 indexes the maps) holding NaN or infinite values replaced by zeros,
    and (B,) True for those maps and for constant ones, which say nothing about where relevance lies."""
    flat = maps.flatten(1)
    broken = ~torch.isfinite(flat).all(1)
    flat = flat.masked_fill(broken[:, None], 0.0)
    low, high = flat.amin(1), flat.amax(1)
    constant = high - low <= CONSTANT * torch.maximum(high.abs(), low.abs())
    return flat.view_as(maps), broken | constant
