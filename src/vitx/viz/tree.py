"""GradCAT's paths through NesT's tree drawn over the image, one panel per explained class (as in Zhang et al.,
AAAI 2022, Fig. 5): each level's chosen block outlined, the four children's scores written in their quadrants,
and the path as a line through the chosen blocks' centres from the root down to the leaf."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .text import DPI


def gradcat_tree(image: torch.Tensor, paths: list[list[dict]], titles=(), *, cell: int = 260) -> Image.Image:
    """A PIL image: ``image`` (3, H, W) in [0, 1] once per path in ``paths`` (GradCAT's ``details["path"]`` entries,
    e.g. for the top-k classes), with ``titles`` above the panels. A node of level l in a tree of L levels is a
    square of side H / 2^(L−1−l), at block (row, col) of its level's grid."""
    count = len(paths)
    fig = Figure(figsize=(count * cell / DPI, (cell + 30) / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, count, squeeze=False)[0]
    height, width = image.shape[-2:]
    colours = colormaps["autumn"]
    for ax, path, title in zip(axes, paths, [*titles, *[""] * count]):
        ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        levels = len(path)
        centres = []
        for depth, node in enumerate(path):
            side_y, side_x = height / 2 ** (levels - 1 - node["level"]), width / 2 ** (levels - 1 - node["level"])
            row, col = node["block"]
            top, left = row * side_y, col * side_x
            colour = colours(depth / max(1, levels - 1))
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), side_x, side_y, fill=False, edgecolor=colour,
                                   linewidth=1 + 2 * depth / max(1, levels - 1)))
            centres.append((left + side_x / 2 - 0.5, top + side_y / 2 - 0.5))
            for (i, j), score in np.ndenumerate(np.asarray(node.get("children", []), dtype=float).reshape(-1, 2)):
                ax.text(left + (j + 0.5) * side_x / 2 - 0.5, top + (i + 0.5) * side_y / 2 - 0.5, f"{score:.2g}",
                        color=colour, fontsize=7, ha="center", va="center")
        xs, ys = zip(*centres)
        ax.plot(xs, ys, "-o", color="cyan", linewidth=1.5, markersize=4)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
