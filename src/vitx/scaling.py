"""Per-map scaling shared by explain(), the metrics and the methods that build masks."""
from __future__ import annotations

import torch


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (dim 0 indexes the maps) to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)
