"""The result of :func:`vitx.explain`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import VitxError
from .images import Frame
from .naming import explanation_file
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
    degenerate: torch.Tensor | None = None  # (B,) bool: the method's map was constant or non-finite (then zeros)
    frames: list[Frame] | None = None     # per image: original size, placement, file stem (when explain read them)
    text_maps: torch.Tensor | None = None  # bi-modal: (B, L) relevance of each text token (column j: text_tokens[i][j]),
                                           # 0 beyond each question's tokens
    text_tokens: tuple[tuple[str, ...], ...] | None = None  # bi-modal: per image its question's tokens, [CLS] first

    def __len__(self) -> int:
        return self.maps.shape[0]

    def target_name(self, i: int) -> str:
        t = int(self.targets[i])
        return self.class_names[t] if t < len(self.class_names) else str(t)

    def overlay(self, i: int, alpha: float = 0.5, cmap: str = "jet", scale: int = 1) -> Image.Image:
        """Image ``i`` with this explanation's heatmap over it."""
        return draw_overlay(self.images[i], self.maps[i], alpha=alpha, cmap=cmap, scale=scale)

    def original_map(self, i: int, fill: float = 0.0) -> torch.Tensor:
        """Map ``i`` at its image's original size (height, width), undoing ``model.preprocess``'s resize, stretch,
        crop or pad; pixels a crop cut away get ``fill``. Needs ``frames``: set when ``vitx.explain`` was given the
        images themselves, else assign ``exp.frames`` from ``model.preprocess(images, frames=True)``."""
        if self.frames is None:
            raise VitxError("this explanation does not know its images' original sizes: pass the images to "
                            "vitx.explain, or set exp.frames from model.preprocess(images, frames=True)")
        return self.frames[i].to_original(self.maps[i], fill)

    def names(self) -> list[str]:
        """A file name stem per image: its file's stem where known (``frames``), else 000, 001, ...; an index is
        put before every stem when two stems are the same."""
        stems = [frame.name for frame in self.frames] if self.frames is not None else [None] * len(self)
        names = [stem or f"{i:03d}" for i, stem in enumerate(stems)]
        if len(set(names)) < len(names):
            names = [f"{i:03d}_{stem}" if stem else name for i, (stem, name) in enumerate(zip(stems, names))]
        return names

    def save(self, directory: str | Path, names: list[str] | None = None, scale: int = 4,
             original_size: bool = False) -> list[Path]:
        """Write ``<name>_<method>.png`` (overlay) and ``<name>_<method>.npy`` (map) per image into ``directory``,
        as ``vitx explain`` does; ``names`` defaults to :meth:`names` (file stems, else 000, 001, ...).
        ``original_size``: the maps at each image's original size (:meth:`original_map`), not the model's."""
        names = self.names() if names is None else [str(name) for name in names]
        if len(names) != len(self):
            raise VitxError(f"got {len(names)} names for {len(self)} images")
        for name in names:
            if not name or Path(name).name != name or name in (".", ".."):
                raise VitxError(f"an image name must be a plain file name, got {name!r}")
        if len(set(names)) < len(names):
            raise VitxError("two images have the same name, and their files would overwrite each other")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for i, name in enumerate(names):
            picture, values = (directory / explanation_file(name, self.method, suffix) for suffix in (".png", ".npy"))
            self.overlay(i, scale=scale).save(picture)
            np.save(values, (self.original_map(i) if original_size else self.maps[i]).cpu().numpy())
            written += [picture, values]
        return written
