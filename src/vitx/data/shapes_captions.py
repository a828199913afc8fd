"""Captions of shapes images, with ground truth on the image and the words: the data of image-text (CLIP-like)
models.

Each item is one image of 2 or 3 objects of different shapes (``CLASS_NAMES``), each in a colour of ``COLOURS``
(repeats allowed), drawn as :func:`vitx.data.shapes_vqa` draws its scenes (masks pixel-exact, objects apart, the
contrast rule kept), and one caption naming every object in a random order: "a red star and a blue circle", "a red
star, a blue circle and a green heart". Half the captions begin with "a photo of" and a quarter leave the colours out
("a photo of a star and a circle"), so that zero-shot prompts read like captions. Each object's phrase ("a red star")
is also a prompt that names that object alone. Ground truth: each object's mask, and the caption tokens that name it
(its colour and shape words).

For zero-shot classification of single-object images, :func:`prompts` gives one prompt per class from a template
("a photo of a star"). Item ``i`` depends only on ``(seed, i)`` and the image size.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import VitxError
from .shapes import CLASS_NAMES, _to_uint8
from .shapes_vqa import COLOUR_NAMES, draw_scene
from .vocabulary import WordTokenizer, split_words

OBJECTS = (2, 3)             # objects per image, fewest and most
PROMPT_TEMPLATES = ("a photo of a {shape}", "a {shape}", "a photo of a {colour} {shape}")
TOKENIZER = WordTokenizer(["a", "photo", "of", "and", ","] + list(COLOUR_NAMES) + list(CLASS_NAMES))
MAX_LENGTH = 3 + 3 * 3 + 2 + 2   # "a photo of", three "a colour shape" phrases, a comma and "and", [CLS], [SEP]
PHOTO, COLOURED = 0.5, 0.75  # the shares of captions that begin with "a photo of" and that name the colours
_STREAM = 11                 # rng stream key, apart from shapes() and shapes_vqa()


def phrase(shape: int, colour: int | None = None) -> str:
    """The words naming one object: "a red star" (without a colour: "a star")."""
    return f"a {CLASS_NAMES[shape]}" if colour is None else f"a {COLOUR_NAMES[colour]} {CLASS_NAMES[shape]}"


def caption(objects: list[tuple[int, int]], photo: bool = False, coloured: bool = True) -> str:
    """The caption of (shape, colour) pairs in their order: "a red star", "a red star and a blue circle", "a, b and c";
    ``photo`` puts "a photo of" first, ``coloured=False`` leaves the colours out."""
    phrases = [phrase(s, c if coloured else None) for s, c in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return ("a photo of " if photo else "") + listed


def prompts(template: str = PROMPT_TEMPLATES[0], colour: str | None = None) -> list[str]:
    """One prompt per class of ``CLASS_NAMES`` from ``template`` (its ``{shape}``, and ``{colour}`` if it has one)."""
    if "{shape}" not in template:
        raise VitxError(f"a prompt template names the shape as {{shape}}, got {template!r}")
    if "{colour}" in template and colour not in COLOUR_NAMES:
        raise VitxError(f"template {template!r} needs a colour among {', '.join(COLOUR_NAMES)}, got {colour!r}")
    return [template.format(shape=shape, colour=colour) for shape in CLASS_NAMES]


@dataclass(frozen=True, eq=False, repr=False)
class ShapesCaptionData:
    """n (image, caption) pairs with ground truth on both modalities; objects padded to 3 slots.

    images (n, 3, H, W) float in [0, 1]; captions: n strings; input_ids, attention_mask (n, L) from
    ``TOKENIZER.encode(captions, MAX_LENGTH)``; object_shapes, object_colours (n, 3) int64 into CLASS_NAMES and
    COLOUR_NAMES, -1 for an empty slot, in the caption's order; object_masks (n, 3, H, W) bool; word_objects (n, L)
    int64: per token, the slot of the object it names (its colour or shape word), -1 for every other token;
    coloured (n,) bool: whether the caption names the colours.
    """

    images: torch.Tensor
    captions: tuple
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    object_shapes: torch.Tensor
    object_colours: torch.Tensor
    object_masks: torch.Tensor
    word_objects: torch.Tensor
    coloured: torch.Tensor
    seed: int

    tokenizer = TOKENIZER

    def __len__(self):
        return self.images.shape[0]

    def __repr__(self):
        return f"ShapesCaptionData(n={len(self)}, image_size={self.images.shape[-1]}, seed={self.seed})"

    def select(self, rows) -> "ShapesCaptionData":
        """The items at ``rows`` (indices or a bool mask), in that order, with the same seed."""
        rows = torch.as_tensor(rows)
        rows = rows.nonzero()[:, 0] if rows.dtype == torch.bool else rows
        picked = {f.name: getattr(self, f.name)[rows] for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, captions=tuple(self.captions[i] for i in rows.tolist()), **picked)

    def phrases(self, i: int) -> list[str]:
        """Item ``i``'s object phrases with their colours, in the caption's order: each a prompt naming one object."""
        return [phrase(s, c) for s, c in zip(self.object_shapes[i].tolist(), self.object_colours[i].tolist())
                if s >= 0]


def shapes_captions(n: int = 500, seed: int = 0, image_size: int = 64, single: bool = False) -> ShapesCaptionData:
    """Generate ``n`` seeded (image, caption) pairs with ground truth as a ShapesCaptionData. ``single``: one object
    per image (the zero-shot test images of ``shapes-clip``) instead of 2 or 3; the fields keep 3 object slots."""
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise VitxError(f"{name} must be an integer >= {low}, got {value!r}")
    n, size, seed, most = int(n), int(image_size), int(seed), OBJECTS[1]
    fewest, drawn_most = (1, 1) if single else OBJECTS
    images = np.empty((n, 3, size, size), np.float32)
    shapes_, colours = np.full((n, most), -1, np.int64), np.full((n, most), -1, np.int64)
    masks, captions, coloured = np.zeros((n, most, size, size), bool), [], np.zeros(n, bool)
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAM, i])
        k = int(rng.integers(fewest, drawn_most + 1))
        shapes_drawn = rng.choice(len(CLASS_NAMES), k, replace=False)
        objects = [(int(s), int(rng.integers(len(COLOUR_NAMES)))) for s in shapes_drawn]
        images[i], drawn, _ = draw_scene(rng, objects, size)
        shapes_[i, :k], colours[i, :k] = zip(*objects)
        masks[i, :k] = drawn
        photo, coloured[i] = rng.random() < PHOTO, rng.random() < COLOURED
        captions.append(caption(objects, photo=bool(photo), coloured=bool(coloured[i])))
    ids, attention = TOKENIZER.encode(captions, MAX_LENGTH, unknown="error")
    word_objects = torch.full_like(ids, -1)
    for i, text in enumerate(captions):
        slot = -1
        words = split_words(text)
        for j, word in enumerate(words):
            if word == "a" and words[j + 1] != "photo":
                slot += 1
            elif word in COLOUR_NAMES or word in CLASS_NAMES:
                word_objects[i, j + 1] = slot
    return ShapesCaptionData(torch.from_numpy(images), tuple(captions), ids, attention, torch.from_numpy(shapes_),
                             torch.from_numpy(colours), torch.from_numpy(masks), word_objects,
                             torch.from_numpy(coloured), seed)


def write_samples(directory, count: int = 2):
    """Write ``count`` two-object images (seed 2024) as ``<first object>_and_<second object>.png`` ("red_star_and_
    blue_circle.png"), their objects named by colour and shape; return the paths."""
    from PIL import Image

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    data = shapes_captions(n=40, seed=2024)
    two = [i for i in range(len(data)) if int((data.object_shapes[i] >= 0).sum()) == 2
           and (data.object_colours[i, :2] >= 0).all() and data.object_colours[i, 0] != data.object_colours[i, 1]]
    paths = []
    for i in two[:count]:
        names = [p.removeprefix("a ").replace(" ", "_") for p in data.phrases(i)]
        paths.append(root / f"{'_and_'.join(names)}.png")
        Image.fromarray(_to_uint8(data.images[i:i + 1])[0]).save(paths[-1])
    return paths
