"""X-Pruner's class-by-unit table drawn as a heatmap: a row per class, a column per unit, the blocks side by side
(each: its attention context channels, then its MLP neurons), the explained class's row framed."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .overlay import heatmap

GAP = 3   # pixels between blocks


def unit_heatmap(table: torch.Tensor, blocks: int, target: int, row_height: int = 12) -> Image.Image:
    """``table`` (classes, blocks x units) as a heatmap (viridis, min-max scaled), ``blocks`` equal groups of
    columns apart, the row of class ``target`` framed in white."""
    values = table.detach().float().cpu().numpy()
    classes, width = values.shape[0], values.shape[1] // blocks
    pixels = np.ones((classes * row_height, blocks * (width + GAP) - GAP, 3))
    colours = np.repeat(heatmap(values, "viridis"), row_height, axis=0)
    for b in range(blocks):
        pixels[:, b * (width + GAP):b * (width + GAP) + width] = colours[:, b * width:(b + 1) * width]
    top, bottom = target * row_height, (target + 1) * row_height - 1
    pixels[[top, bottom], :] = 1
    pixels[top:bottom + 1, [0, -1]] = 1
    return Image.fromarray((pixels * 255).round().astype(np.uint8))
