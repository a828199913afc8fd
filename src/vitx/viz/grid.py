"""Side-by-side grids: one row per image, the image first, then one heatmap overlay per column."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .overlay import overlay

DPI = 100


def grid(images: torch.Tensor, columns: dict[str, torch.Tensor], row_labels=(), *, first_title: str = "image",
         cell: int = 180, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """A PIL image of ``images`` (B, 3, H, W) in [0, 1], each followed by its maps (B, H, W) from every
    entry of ``columns`` (column title -> maps), drawn as overlays. ``row_labels`` (one per image) go
    under the first column; every cell is ``cell`` pixels wide, plus room for the headers and labels."""
    rows, count = images.shape[0], 1 + len(columns)
    label_lines = max((str(label).count("\n") + 1 for label in row_labels), default=0)
    height = rows * (cell + 14 * label_lines + 10) + 30
    fig = Figure(figsize=(count * cell / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, count, squeeze=False)
    for r in range(rows):
        cells = [images[r].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()]
        cells += [np.asarray(overlay(images[r], maps[r], alpha=alpha, cmap=cmap)) for maps in columns.values()]
        for ax, picture in zip(axes[r], cells):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if r < len(row_labels):
            axes[r, 0].set_xlabel(str(row_labels[r]), fontsize=8)
    for ax, title in zip(axes[0], [first_title, *columns]):
        ax.set_title(title, fontsize=9, fontweight="bold")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def tile(images: torch.Tensor, columns: int = 8, gap: int = 2) -> Image.Image:
    """Images (B, 3, H, W) in [0, 1] side by side, ``columns`` to a row, ``gap`` white pixels between them."""
    B, _, H, W = images.shape
    rows = -(-B // columns)
    sheet = np.ones((rows * (H + gap) - gap, min(B, columns) * (W + gap) - gap, 3))
    for i, image in enumerate(images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, columns)
        sheet[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = image
    return Image.fromarray((sheet * 255).round().astype(np.uint8))
