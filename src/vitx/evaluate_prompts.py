"""``vitx.evaluate`` on an image-text (CLIP-like) model: every method on the same ``vitx.data.shapes_captions`` images,
each explained with prompts that name one of its objects (:mod:`vitx.metrics.image_text`).

Every image has two or three objects; its first two in the caption's order, A and B, give two pairs: the image with
the prompt naming A ("a red star", its colour and shape) and with the prompt naming B. Each pair's similarity is
explained with its prompt as the target (``normalize=False``) and scored on A's mask (pointing game, energy), against
B's (class sensitivity), on A's naming words (colour and shape) among the prompt's words, and by deleting and
inserting image tokens in the map's order. The reference rows: ``random`` (uniform noise on the pixels and on the
prompt's tokens) and ``ground-truth`` (A's mask, and the words that name A).
"""
from __future__ import annotations

from typing import Callable

import torch

from .data.shapes import CLASS_NAMES
from .data.shapes_captions import ShapesCaptionData, phrase
from .data.shapes_vqa import COLOUR_NAMES
from .errors import VitxError
from .evaluate import Evaluation, checked_run, score_methods
from .evaluate_pairs import both_maps
from .explain import explain
from .explanation import Explanation
from .metrics.image_text import compute_image_text
from .prompts import similarities


def prompt_rows(data: ShapesCaptionData) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The pairs of ``data``: per row its image (2n,), its prompt, and its object slots (2n, 2) (the named object's,
    then the other one's); image-major, A's prompt before B's."""
    images = torch.arange(len(data)).repeat_interleave(2)
    slots = torch.tensor([[0, 1], [1, 0]]).repeat(len(data), 1)
    shape = data.object_shapes[images, slots[:, 0]].tolist()
    colour = data.object_colours[images, slots[:, 0]].tolist()
    return images, [phrase(s, c) for s, c in zip(shape, colour)], slots


def evaluate_prompts(model, data: ShapesCaptionData, methods="all", metrics=None, *, params: dict | None = None,
                     batch_size: int = 32, seed: int = 0, gallery: int = 4, previous: Evaluation | None = None,
                     progress: bool = False, scored: Callable[[Evaluation], None] | None = None) -> Evaluation:
    """:func:`vitx.evaluate` for a loaded image-text ``model`` on ``data`` (its arguments, bar ``sanity_images``).
    ``results`` also holds ``similarity``, the mean similarity of the explained pairs (two per image)."""
    names, metric_names, params = checked_run(model, data, methods, metrics, params, batch_size)
    device = model.device
    images, prompts, slots = prompt_rows(data)
    unique = list(dict.fromkeys(prompts))
    chosen = [unique.index(p) for p in prompts]
    text = model.encode_text(prompts, unknown="error").to(device)
    naming = _naming_words(data, images, slots[:, 0], text).to(device)
    x = model.normalize(data.images.to(device))
    masks = data.object_masks.to(device)[images.to(device)[:, None], slots.to(device)]    # (2n, 2, H, W)
    own, other = masks[:, 0], masks[:, 1]
    pair_x = x[images.to(device)]
    scores = similarities(model, x, model.encode_text(unique, unknown="error"), batch_size)
    layout = model.layout(x[:1])
    inputs = {"model": model, "x": pair_x, "text": text, "masks": own, "other_masks": other, "naming": naming,
              "mask": text.mask, "batch_size": batch_size}
    results = {"model": model.config.name or type(model.net).__name__, "n": len(data), "seed": seed,
               "data_seed": data.seed, "variant": "clip", "explanations": len(prompts), "sanity_explanations": 0,
               "similarity": scores.cpu()[images, torch.tensor(chosen)].float().mean().item(), "methods": {}}
    shown = images[:gallery]
    evaluation = Evaluation(results, images=data.images[shown].clone(), targets=torch.arange(len(shown)),
                            class_names=tuple(prompts[:gallery]))

    def explained(name: str, settings: dict, count: int) -> dict:
        def run() -> Explanation:
            return explain(model, pair_x[:count], name, text=unique, target=chosen[:count], batch_size=batch_size,
                           normalize=False, **settings)
        return both_maps(name, count, own, naming, text.mask, seed, layout, run)

    def scored_pairs(name: str, settings: dict, maps: dict, group: list[str]) -> tuple[dict, dict]:
        raw = {}
        return compute_image_text(group, raw=raw, **inputs, **maps), raw

    score_methods(evaluation, model, names, metric_names, params, len(prompts), gallery, seed, explained,
                  scored_pairs, previous, progress, scored)
    return evaluation


def _naming_words(data: ShapesCaptionData, images: torch.Tensor, slot: torch.Tensor, text) -> torch.Tensor:
    """(rows, L) bool: the columns of each row's prompt whose token is the named object's colour or shape."""
    naming = torch.zeros(text.mask.shape, dtype=torch.bool)
    for row, (i, k) in enumerate(zip(images.tolist(), slot.tolist())):
        words = {COLOUR_NAMES[int(data.object_colours[i, k])], CLASS_NAMES[int(data.object_shapes[i, k])]}
        for column, token in enumerate(text.tokens[row]):
            naming[row, column] = token.lower() in words
    if (naming.sum(1) < 2).any():
        raise VitxError("the model splits the prompts into other tokens than the data's words, so the words that name "
                        "each object cannot be placed on its tokens")
    return naming


__all__ = ["evaluate_prompts", "prompt_rows"]
