"""Heatmaps over images, as PIL images."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

OVERLAY_SIZE = 256   # overlays and maps are enlarged by a whole factor to at least this many pixels


def overlay_scale(size) -> int:
    """The whole factor that enlarges a picture of ``size`` (H, W) to at least :data:`OVERLAY_SIZE` pixels."""
    return max(1, -(-OVERLAY_SIZE // max(size)))


def heatmap(relevance: torch.Tensor | np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) relevance -> (H, W, 3) float colours in [0, 1], min-max scaled."""
    r = np.asarray(relevance.detach().cpu() if isinstance(relevance, torch.Tensor) else relevance, dtype=np.float64)
    span = r.max() - r.min()
    r = (r - r.min()) / span if span > 0 else np.zeros_like(r)
    return colormaps[cmap](r)[..., :3]


def overlay(image: torch.Tensor, relevance: torch.Tensor, alpha: float = 0.5, cmap: str = "jet",
            scale: int = 1) -> Image.Image:
    """Blend the heatmap of ``relevance`` (H, W) over ``image`` (3, H, W) in [0, 1]; ``scale`` enlarges."""
    picture = image.detach().cpu().permute(1, 2, 0).numpy()
    blended = (1 - alpha) * picture + alpha * heatmap(relevance, cmap)
    result = Image.fromarray((blended.clip(0, 1) * 255).round().astype(np.uint8))
    if scale != 1:
        result = result.resize((result.width * scale, result.height * scale), Image.NEAREST)
    return result
