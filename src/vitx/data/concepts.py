"""Concept labels of the single-object shapes images, for the Concept Transformer (Rigotti et al., ICLR 2022).

Global concepts (one set per image, the class token attends to them; the labels are multi-hot):
- colour: the object's dominant RGB channel, "red", "green" or "blue" (the object is painted in one solid colour, so
  it is read from the pixels under its mask); only where that channel leads the next by COLOUR_MARGIN or more (about
  3 images in 4): a near-tie names no colour, and the image's colour group is left unlabelled;
- corners: "no corners" (the circle) or "has corners" (every other class: the heart's two cusps and the crescent's
  two tips count as corners);
- number of corners (only for a shape with corners): 2 (heart, crescent), 3 (triangle), 4 (square), 6 (L-shape),
  10 (star: 5 convex and 5 concave), 12 (cross: 8 convex and 4 concave);
- outline: "curved" (circle, heart, crescent) or "straight" (square, triangle, star, cross, L-shape);
- concavity (only for a shape with corners): "concave corner" where a corner points into the shape (star, cross,
  L-shape, and the heart's dimple) or "convex corners" (square, triangle, crescent). Without it the heart and the
  crescent share every other concept, and a model whose logits are a map of its concept attention cannot tell them
  apart without straying from the labels.

Spatial concepts (one per patch of the patch grid, the patch tokens attend to them), by this rule, first match wins:
"background" when no pixel of the patch is the object's; "corner" when a vertex of the shape (its exact position from
the object's pose) lies in the patch; "interior" when every pixel of the patch is the object's; otherwise the object's
outline crosses the patch: "curved edge" or "straight edge" by the shape's outline (every edge of a shape is of one
kind).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .shapes import CLASS_NAMES, VARIANTS, _render

COLOURS = ("red", "green", "blue")
COLOUR_MARGIN = 0.1   # of the dominant channel over the next (colours are in [0, 1])
CORNER_COUNTS = (2, 3, 4, 6, 10, 12)
GLOBAL_CONCEPTS = (*COLOURS, "no corners", "has corners", *(f"{k} corners" for k in CORNER_COUNTS), "curved",
                   "straight", "convex corners", "concave corner")
# the global concepts in groups, each an exclusive choice: the top-1 agreement is scored within a group
GROUPS = {"colour": (0, 1, 2), "corners": (3, 4), "number of corners": tuple(range(5, 5 + len(CORNER_COUNTS))),
          "outline": (11, 12), "concavity": (13, 14)}
SPATIAL_CONCEPTS = ("background", "interior", "straight edge", "curved edge", "corner")
CURVED = ("circle", "heart", "crescent")
CONCAVE = ("star", "cross", "lshape", "heart")


def _star(n: int, inner: float) -> list[tuple[float, float]]:
    """Vertices of shapes.py's n-pointed star in its local frame: outer points at angles 2πk/n (radius 1), inner ones
    half-way between (radius ``inner``)."""
    outer = [(np.cos(2 * np.pi * k / n), np.sin(2 * np.pi * k / n)) for k in range(n)]
    between = [(inner * np.cos(2 * np.pi * k / n + np.pi / n), inner * np.sin(2 * np.pi * k / n + np.pi / n))
               for k in range(n)]
    return outer + between


def _cross(a: float = 0.93, w: float = 0.33) -> list[tuple[float, float]]:
    return [(su * x, sv * y) for su in (1, -1) for sv in (1, -1) for x, y in ((a, w), (w, a), (w, w))]


_C = 0.55   # shapes.py's L-shape: [-c, c] x [-1.5c, 1.5c] without the quadrant u > 0, v < 0.5c
_TIP = (0.61, float(np.sqrt(1 - 0.61 ** 2)))   # the crescent's tips: u² + v² = 1 meets (u − 0.5)² + v² = 0.64
# The vertices of each shape in shapes.py's local frame (u, v), where the shape fits the unit disc.
VERTICES = {
    "circle": [],
    "square": [(np.cos(k * np.pi / 2), np.sin(k * np.pi / 2)) for k in range(4)],
    "triangle": [(np.cos(2 * k * np.pi / 3), np.sin(2 * k * np.pi / 3)) for k in range(3)],
    "star": _star(5, 0.5),
    "cross": _cross(),
    "heart": [(0.0, (1 - 0.25) / 1.26), (0.0, (-1 - 0.25) / 1.26)],   # the cusps x = 0, y = ±1 of the heart curve
    "crescent": [_TIP, (_TIP[0], -_TIP[1])],
    "lshape": [(-_C, -1.5 * _C), (0.0, -1.5 * _C), (0.0, 0.5 * _C), (_C, 0.5 * _C), (_C, 1.5 * _C), (-_C, 1.5 * _C)],
}
assert all(len(VERTICES[name]) in (0, *CORNER_COUNTS) for name in CLASS_NAMES)


def class_concepts(name: str) -> list[int]:
    """The global concepts a class fixes (all but the colour): indices into GLOBAL_CONCEPTS."""
    corners = len(VERTICES[name])
    found = [GLOBAL_CONCEPTS.index("has corners" if corners else "no corners")]
    if corners:
        found.append(GLOBAL_CONCEPTS.index(f"{corners} corners"))
        found.append(GLOBAL_CONCEPTS.index("concave corner" if name in CONCAVE else "convex corners"))
    return found + [GLOBAL_CONCEPTS.index("curved" if name in CURVED else "straight")]


def vertices(name: str, pose: tuple[float, float, float, float]) -> np.ndarray:
    """The shape's vertices in image coordinates (k, 2) as (x, y) pixels, for its pose (cx, cy, radius, rotation):
    the inverse of shapes.py's u = (dx cos θ + dy sin θ) / r, v = (dy cos θ − dx sin θ) / r."""
    cx, cy, r, theta = pose
    uv = np.asarray(VERTICES[name], dtype=np.float64).reshape(-1, 2)
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([cx + r * (uv[:, 0] * c - uv[:, 1] * s), cy + r * (uv[:, 0] * s + uv[:, 1] * c)], 1)


def spatial_labels(mask: np.ndarray, name: str, pose, grid: int) -> np.ndarray:
    """Per patch of a ``grid`` x ``grid`` partition of ``mask`` (S, S), the index of its spatial concept (the rule in
    the module's docstring), row-major (grid²,)."""
    p = mask.shape[0] // grid
    share = mask.reshape(grid, p, grid, p).mean((1, 3))
    labels = np.full((grid, grid), SPATIAL_CONCEPTS.index("curved edge" if name in CURVED else "straight edge"))
    labels[share == 1] = SPATIAL_CONCEPTS.index("interior")
    for x, y in vertices(name, pose):
        row, col = min(int(y // p), grid - 1), min(int(x // p), grid - 1)
        labels[row, col] = SPATIAL_CONCEPTS.index("corner")
    labels[share == 0] = SPATIAL_CONCEPTS.index("background")
    return labels.reshape(-1)


@dataclass(frozen=True, eq=False, repr=False)
class ShapesConcepts:
    """Single-object shapes images (n, 3, S, S) in [0, 1] with their labels and masks (as :class:`ShapesData`), the
    object's colour (n, 3), its global concepts (n, len(GLOBAL_CONCEPTS)) multi-hot and its spatial concept per patch
    (n, grid²) as indices into SPATIAL_CONCEPTS."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    colours: torch.Tensor
    global_concepts: torch.Tensor
    spatial_concepts: torch.Tensor
    seed: int

    def __len__(self):
        return self.images.shape[0]

    def __repr__(self):
        return f"ShapesConcepts(n={len(self)}, image_size={self.images.shape[-1]}, seed={self.seed})"


def shapes_concepts(n: int = 500, seed: int = 0, grid: int = 8, image_size: int = 64) -> ShapesConcepts:
    """The images of ``vitx.data.shapes(n, seed, "single", image_size)`` (the very same) with their concept labels on a
    ``grid`` x ``grid`` patch grid."""
    for label, value, low in (("n", n, 1), ("seed", seed, 0), ("grid", grid, 1), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if image_size % grid:
        raise ValueError(f"grid {grid} does not divide image_size {image_size}")
    images = np.empty((n, 3, image_size, image_size), np.float32)
    labels, masks = np.empty(n, np.int64), np.empty((n, image_size, image_size), bool)
    colours, found = np.empty((n, 3), np.float32), np.zeros((n, len(GLOBAL_CONCEPTS)), np.float32)
    spatial = np.empty((n, grid * grid), np.int64)
    for i in range(n):
        poses = []
        rng = np.random.default_rng([int(seed), VARIANTS.index("single"), i])
        images[i], ((c, masks[i]),) = _render(rng, "single", image_size, poses)
        labels[i], name = c, CLASS_NAMES[c]
        colours[i] = images[i][:, masks[i]].mean(1)
        top = np.sort(colours[i])
        found[i, class_concepts(name) + ([int(colours[i].argmax())] if top[2] - top[1] >= COLOUR_MARGIN else [])] = 1
        spatial[i] = spatial_labels(masks[i], name, poses[0], grid)
    return ShapesConcepts(*(torch.from_numpy(a) for a in (images, labels, masks, colours, found, spatial)), int(seed))
