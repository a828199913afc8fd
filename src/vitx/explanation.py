"""The result of :func:`vitx.explain`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .viz import overlay as draw_overlay


@dataclass
class Explanation:
    maps: torch.Tensor                    # (B, H, W) pixel space, higher = more relevant to the target
    token_maps: torch.Tensor | None       # (B, gh, gw) on the patch grid, for methods that work on tokens
    targets: torch.Tensor                 # (B,) explained class per image
    logits: torch.Tensor                  # (B, classes) of the unmodified images
    method: str
    params: dict
    images: torch.Tensor                  # (B, 3, H, W) in [0, 1], for drawing
    class_names: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.maps.shape[0]

    def target_name(self, i: int) -> str:
        t = int(self.targets[i])
        return self.class_names[t] if t < len(self.class_names) else str(t)

    def overlay(self, i: int, alpha: float = 0.5, cmap: str = "jet", scale: int = 1) -> Image.Image:
        """Image ``i`` with this explanation's heatmap over it."""
        return draw_overlay(self.images[i], self.maps[i], alpha=alpha, cmap=cmap, scale=scale)

    def save(self, directory: str | Path, scale: int = 4) -> list[Path]:
        """Write ``<i>_<method>.png`` overlays and ``<method>.npy`` maps (plus token maps) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for i in range(len(self)):
            path = directory / f"{i:03d}_{self.method}.png"
            self.overlay(i, scale=scale).save(path)
            written.append(path)
        path = directory / f"{self.method}.npy"
        np.save(path, self.maps.cpu().numpy())
        written.append(path)
        if self.token_maps is not None:
            path = directory / f"{self.method}_tokens.npy"
            np.save(path, self.token_maps.cpu().numpy())
            written.append(path)
        return written
