"""The prompts of an image-text model (CLIP and kin): ``text=`` of :func:`vitx.explain` read as prompts, and the
(image, prompt) pairs whose similarities an explanation explains.

Without a target every image is paired with every prompt, image-major (row r: image r // P, prompt r % P); with a
target (a prompt index or the prompt itself, one for every image or one per image) each image with its target
prompt, as in zero-shot classification by prompts.
"""
from __future__ import annotations

import torch

from .errors import VitxError
from .model import Model
from .targets import resolve_targets
from .text import Text


def encode_prompts(model: Model, text) -> tuple[Text, tuple[str, ...]]:
    """``text`` (a prompt or a list of them) encoded for ``model``, and the prompts themselves."""
    if text is None:
        raise VitxError(f"this {model.config.kind!r} model scores (image, prompt) pairs: pass one or more prompts as "
                        "text=[...] (--text on the command line)")
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, (list, tuple)) or not text or not all(isinstance(p, str) for p in text):
        raise VitxError(f"text must be a prompt or a non-empty list of prompts, got {text!r:.80}")
    for i, prompt in enumerate(text):
        if not prompt.strip():
            raise VitxError(f"prompt {i} is empty: {prompt!r}")
    return model.encode_text(list(text)), tuple(text)


def prompt_pairs(model: Model, target, images: int, prompts: tuple[str, ...]) -> torch.Tensor:
    """The (image, prompt) pairs to explain, (rows, 2) int64 on the CPU (see the module)."""
    if target is None:
        return torch.cartesian_prod(torch.arange(images), torch.arange(len(prompts)))
    chosen = resolve_targets(target, images, model, classes=prompts, noun="prompt").cpu()
    return torch.stack([torch.arange(images), chosen], 1)


@torch.no_grad()
def similarities(model: Model, x: torch.Tensor, text: Text, batch_size: int) -> torch.Tensor:
    """Every image's similarity with every prompt, (B, P): each image and each prompt encoded once."""
    text = text.to(model.device)
    return torch.cat([model.adapter.similarities(x[i:i + batch_size], text) for i in range(0, len(x), batch_size)])


def pair_similarities(model: Model, x: torch.Tensor, text: Text) -> torch.Tensor:
    """s(x_r, t_r) per row, (B, 1), as ``model(x, text)``, with the image tower run once per distinct image: the rows
    of a pair batch repeat each image once per prompt (and a perturbation method's copies perturb them alike). Rows
    are grouped by a random projection of their pixels, then checked equal; for forward passes without gradients."""
    flat = x.flatten(1)
    probe = torch.randn(flat.shape[1], 2, generator=torch.Generator().manual_seed(0)).to(flat)
    first, inverse = unique_rows(flat @ probe)
    if len(first) == len(x) or not torch.equal(flat, flat[first][inverse]):
        return model(x, text)
    adapter = model.adapter
    return adapter.pair_scores(adapter.image_features(x[first])[inverse], adapter.text_features(text))


def unique_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the index of each distinct row's first occurrence, each row's distinct row) of ``values`` (n, k)."""
    distinct, inverse = torch.unique(values, dim=0, return_inverse=True)
    order = torch.arange(len(values), device=values.device)
    first = torch.full((len(distinct),), len(values), device=values.device).scatter_reduce(0, inverse, order, "amin")
    return first, inverse
