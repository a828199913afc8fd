"""Procedural shapes dataset with pixel-exact ground truth.

Every image is drawn with numpy: a random base colour with low-frequency
sinusoidal texture and mild noise, then class-free clutter (thin line segments,
arcs and 1-2 px specks), then the class objects on top. Objects are solid
shapes with a random size, position, rotation and colour, inside-tested on the
pixel-centre grid with no anti-aliasing, so their masks are *exactly* the
pixels painted with the object's colour. Each object colour differs from the
mean colour of the background around it by at least 0.3 (mean absolute RGB).

``variant="single"`` has one object per image, with a uniformly random class.
``variant="multi"`` has 2 or 3 objects of different classes that do not overlap.
Image ``i`` depends only on ``(seed, variant, i)`` and the image size, so a
smaller ``n`` gives a prefix of a larger one.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "heart", "crescent", "lshape")
VARIANTS = ("single", "multi")
_SIZE = {"single": (0.35, 0.55), "multi": (0.28, 0.42)}  # bounding diameter / image size
_MIN_CONTRAST = 0.3
_GAP = 2.0  # pixels between the bounding circles of objects in a multi image


def _regular(u, v, n, inner):
    """Inside test of an n-pointed star with outer radius 1 and the given inner radius."""
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    phi = np.abs(np.mod(phi + np.pi / n, 2 * np.pi / n) - np.pi / n)  # fold into one half-arm
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    bx, by = inner * np.cos(np.pi / n), inner * np.sin(np.pi / n)
    return (bx - 1) * py - by * (px - 1) >= 0  # origin side of the edge (1, 0) -> (bx, by)


def _heart(u, v):
    x, y = 1.26 * u, 1.26 * v + 0.25
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


def _cross(u, v, a=0.93, w=0.33):
    au, av = np.abs(u), np.abs(v)
    return ((au <= a) & (av <= w)) | ((au <= w) & (av <= a))


def _lshape(u, v, c=0.55):
    inside = (u >= -c) & (u <= c) & (v >= -1.5 * c) & (v <= 1.5 * c)
    return inside & ((u <= 0) | (v >= 0.5 * c))


# Inside tests in a local frame where the shape fits in the unit disc.
_SHAPES = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: _regular(u, v, 4, np.cos(np.pi / 4)),
    "triangle": lambda u, v: _regular(u, v, 3, 0.5),
    "star": lambda u, v: _regular(u, v, 5, 0.5),
    "cross": _cross,
    "heart": _heart,
    "crescent": lambda u, v: (u * u + v * v <= 1) & ((u - 0.5) ** 2 + v * v > 0.64),
    "lshape": _lshape,
}


def _window(size, x_lo, x_hi, y_lo, y_hi):
    """Integer pixel window covering [x_lo, x_hi] x [y_lo, y_hi]; returns offsets and pixel centres."""
    x0, y0 = max(int(np.floor(x_lo)), 0), max(int(np.floor(y_lo)), 0)
    x1, y1 = min(int(np.ceil(x_hi)) + 1, size), min(int(np.ceil(y_hi)) + 1, size)
    xs = np.arange(x0, max(x1, x0), dtype=np.float32)[None, :] + 0.5
    ys = np.arange(y0, max(y1, y0), dtype=np.float32)[:, None] + 0.5
    return y0, x0, ys, xs


def _paint(img, y0, x0, inside, colour):
    h, w = inside.shape
    img[:, y0:y0 + h, x0:x0 + w][:, inside] = colour[:, None]


def _background(rng, size):
    """Random base colour + three low-frequency gratings (0.5-3 cycles per image) + mild noise."""
    coords = 2 * np.pi * (np.arange(size) + 0.5) / size
    freq, angle, phase = rng.uniform(0.5, 3.0, 3), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0, 2 * np.pi, 3)
    gx = (freq * np.cos(angle))[:, None] * coords + phase[:, None]  # (3, S): separable sin(gx + gy)
    gy = (freq * np.sin(angle))[:, None] * coords
    gratings = np.sin(gy)[:, :, None] * np.cos(gx)[:, None, :] + np.cos(gy)[:, :, None] * np.sin(gx)[:, None, :]
    amps = rng.uniform(-0.12, 0.12, (3, 3))  # (grating, channel)
    img = (amps.T @ gratings.reshape(3, -1)).reshape(3, size, size).astype(np.float32)
    img += rng.uniform(0.1, 0.9, (3, 1, 1)).astype(np.float32)
    img += (rng.random(img.shape, dtype=np.float32) - 0.5) * np.float32(0.08)  # mild uniform noise
    return np.clip(img, 0, 1, out=img)


def _clutter(rng, img, size):
    """Thin segments, open arcs and 1-2 px specks that belong to no class."""
    for _ in range(rng.integers(2, 5)):
        p = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.5) * size
        d = length * np.array([np.cos(angle), np.sin(angle)])
        q = p + d
        y0, x0, ys, xs = _window(size, min(p[0], q[0]) - 1, max(p[0], q[0]) + 1, min(p[1], q[1]) - 1, max(p[1], q[1]) + 1)
        t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / (length * length), 0, 1)
        near = np.hypot(xs - p[0] - t * d[0], ys - p[1] - t * d[1]) <= 0.5
        _paint(img, y0, x0, near, rng.uniform(0, 1, 3))
    for _ in range(rng.integers(0, 3)):
        c, radius = rng.uniform(0, size, 2), rng.uniform(0.1, 0.3) * size
        start, span = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.1) * np.pi
        y0, x0, ys, xs = _window(size, c[0] - radius - 1, c[0] + radius + 1, c[1] - radius - 1, c[1] + radius + 1)
        on = np.abs(np.hypot(xs - c[0], ys - c[1]) - radius) <= 0.5
        on &= np.mod(np.arctan2(ys - c[1], xs - c[0]) - start, 2 * np.pi) <= span
        _paint(img, y0, x0, on, rng.uniform(0, 1, 3))
    k = rng.integers(4, 13)
    ys, xs = rng.integers(0, size - 1, (2, k))
    big, colours = rng.random(k) < 0.5, rng.uniform(0, 1, (3, k)).astype(np.float32)
    img[:, ys, xs] = colours
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        img[:, ys[big] + dy, xs[big] + dx] = colours[:, big]


def _layout(rng, size, k, lo, hi):
    """Centres and radii of k objects whose bounding circles keep a gap of _GAP pixels."""
    radii = rng.uniform(lo, hi, k) * size / 2
    while True:
        centres = []
        for r in radii:
            cand = rng.uniform(r, size - r, (32, 2))
            ok = np.ones(len(cand), bool)
            for c, rc in zip(centres, radii):
                ok &= np.hypot(*(cand - c).T) >= r + rc + _GAP
            if not ok.any():
                break
            centres.append(cand[np.argmax(ok)])
        else:
            return centres, radii
        radii = radii * 0.95  # rare: crowded layout, shrink and retry


def _draw_object(rng, img, name, centre, radius, colour=None, poses=None):
    """Paint one solid object; return its full-size boolean mask.

    A given ``colour`` (3,) float32 is painted only where it keeps the contrast rule; otherwise nothing is painted
    and None is returned (the caller redraws the image). Without one, a random colour that keeps it is drawn.
    ``poses``, a list, receives the object's (cx, cy, radius, rotation) in pixels and radians."""
    size = img.shape[-1]
    (cx, cy), theta = centre, rng.uniform(0, 2 * np.pi)
    if poses is not None:
        poses.append((float(cx), float(cy), float(radius), float(theta)))
    y0, x0, ys, xs = _window(size, cx - radius, cx + radius, cy - radius, cy + radius)
    dx, dy = xs - cx, ys - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / radius
    v = (dy * np.cos(theta) - dx * np.sin(theta)) / radius
    inside = _SHAPES[name](u, v)
    around = img[:, y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]][:, ~inside].mean(1)  # box minus shape
    if colour is not None:
        if np.abs(colour - around).mean() < _MIN_CONTRAST:
            return None
    else:
        for _ in range(50):
            colour = rng.uniform(0, 1, 3).astype(np.float32)
            if np.abs(colour - around).mean() >= _MIN_CONTRAST:
                break
        else:  # the farthest RGB corner always differs by >= 0.5
            colour = (around < 0.5).astype(np.float32)
    _paint(img, y0, x0, inside, colour)
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + inside.shape[0], x0:x0 + inside.shape[1]] = inside
    return mask


def _render(rng, variant, size, poses=None):
    """One image (3, S, S) and its objects as a list of (class id, mask); ``poses`` receives each object's pose."""
    img = _background(rng, size)
    _clutter(rng, img, size)
    lo, hi = _SIZE[variant]
    if variant == "single":
        classes = [int(rng.integers(len(CLASS_NAMES)))]
        radius = rng.uniform(lo, hi) * size / 2
        centres, radii = [rng.uniform(radius, size - radius, 2)], [radius]
    else:
        classes = [int(c) for c in rng.choice(len(CLASS_NAMES), rng.integers(2, 4), replace=False)]
        centres, radii = _layout(rng, size, len(classes), lo, hi)
    objects = [(c, _draw_object(rng, img, CLASS_NAMES[c], p, r, poses=poses))
               for c, p, r in zip(classes, centres, radii)]
    return img, objects


def _to_uint8(images):
    """(n, 3, H, W) floats in [0, 1] -> (n, H, W, 3) uint8."""
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@dataclass(frozen=True, eq=False, repr=False)
class ShapesData:
    """Images (n, 3, H, W) in [0, 1], labels and pixel-exact masks of a shapes dataset."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    class_names: tuple
    variant: str
    seed: int

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i], self.masks[i]

    def __repr__(self):
        return f"ShapesData(n={len(self)}, variant={self.variant!r}, image_size={self.images.shape[-1]}, seed={self.seed})"

    def export(self, directory):
        """Write images/, masks/ (0/255 PNGs) and labels.csv under ``directory``; return its Path."""
        from PIL import Image

        root = Path(directory)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        pixels = _to_uint8(self.images)
        masks = self.masks.numpy().astype(np.uint8) * 255
        with open(root / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "file", "labels"])
            for i in range(len(self)):
                Image.fromarray(pixels[i]).save(root / "images" / f"{i:05d}.png")
                if self.variant == "single":
                    present = [int(self.labels[i])]
                    Image.fromarray(masks[i]).save(root / "masks" / f"{i:05d}.png")
                else:
                    present = torch.nonzero(self.labels[i]).flatten().tolist()
                    for c in present:
                        Image.fromarray(masks[i, c]).save(root / "masks" / f"{i:05d}_{self.class_names[c]}.png")
                writer.writerow([i, f"images/{i:05d}.png", ";".join(self.class_names[c] for c in present)])
        return root


def shapes(n=500, seed=0, variant="single", image_size=64):
    """Generate ``n`` seeded shapes images of ``variant`` "single" or "multi" as a ShapesData."""
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n, size, num_classes = int(n), int(image_size), len(CLASS_NAMES)
    images = np.empty((n, 3, size, size), np.float32)
    if variant == "single":
        labels, masks = np.empty(n, np.int64), np.empty((n, size, size), bool)
    else:
        labels, masks = np.zeros((n, num_classes), np.float32), np.zeros((n, num_classes, size, size), bool)
    for i in range(n):
        images[i], objects = _render(np.random.default_rng([int(seed), VARIANTS.index(variant), i]), variant, size)
        for c, mask in objects:
            if variant == "single":
                labels[i], masks[i] = c, mask
            else:
                labels[i, c], masks[i, c] = 1.0, mask
    return ShapesData(torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks),
                      CLASS_NAMES, variant, int(seed))


def write_samples(directory):
    """Write one 64x64 single image per class (seed 2024) as ``<index>_<class>.png``; return the paths."""
    from PIL import Image

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    data = shapes(n=400, seed=2024, variant="single", image_size=64)
    paths = []
    for c, name in enumerate(CLASS_NAMES[:8]):
        i = int(torch.nonzero(data.labels == c)[0])
        paths.append(root / f"{i}_{name}.png")
        Image.fromarray(_to_uint8(data.images[i : i + 1])[0]).save(paths[-1])
    return paths
