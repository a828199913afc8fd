"""Shapes images written to a folder, shared by the collection tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vitx.data import CLASS_NAMES, shapes


def write_shapes(folder: Path, n: int, seed: int = 0, masks: bool = False) -> list[tuple[str, str]]:
    """``n`` shapes images as ``folder/img_<i>.png`` (and ``mask_<i>.png``); returns (file name, class name) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    data = shapes(n, seed=seed)
    written = []
    for i in range(n):
        pixels = (np.asarray(data.images[i]).transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
        if masks:
            Image.fromarray(np.asarray(data.masks[i]).astype(np.uint8) * 255).save(folder / f"mask_{i:03d}.png")
        written.append((f"img_{i:03d}.png", CLASS_NAMES[int(data.labels[i])]))
    return written
