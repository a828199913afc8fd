"""Scores of image-text (CLIP-like) explanations, one value per explained (image, prompt) pair, where the prompt names
one object of a multi-object image (object A; B is another object of the same image).

Conventions: ``maps`` (B, H, W) pixel relevance of each pair's similarity, higher = more relevant, any sign and scale;
``masks`` and ``other_masks`` (B, H, W) bool, the masks of A and B; ``text_maps`` (B, L) relevance per column of
the encoded prompts ``text`` (:class:`~vitx.text.Text`, ``[CLS] words [SEP]`` then padding), ``naming`` (B, L) bool
the columns of the words that name A (its colour and its shape); ``scores`` (B, N) relevance per patch token.
"""
from __future__ import annotations

import torch

from ..errors import VitxError
from ..model import as_model, evaluating
from ..text import Text
from .bimodal import word_columns
from .checks import as_maps, as_masks
from .localisation import class_sensitivity, energy_pointing_game, pointing_game_tolerant, relevance_rank_accuracy
from .perturbation import _positive, _rank, _token_logits, auc
from .registry import MetricInfo, compute_rows


def object_grounding(maps, masks, other_masks) -> dict[str, torch.Tensor]:
    """Ground truth on the image, per pair (B,): ``pointing_game``, Zhang et al.'s pointing game with their tolerance
    (15 pixels at 224, scaled to the image; :func:`~vitx.metrics.pointing_game_tolerant`) in A's mask; ``energy``,
    the share of the positive relevance inside A's mask (:func:`~vitx.metrics.energy_pointing_game`);
    ``class_sensitivity``, 1 when the map's mean relevance per pixel is higher inside A's mask than inside B's, else 0
    (:func:`~vitx.metrics.class_sensitivity` on the two masks; a tie counts as a failure)."""
    maps = as_maps(maps)
    own, other = as_masks(masks, maps), as_masks(other_masks, maps)
    both = torch.stack([own, other], 1)
    sensitivity = class_sensitivity(maps, both, torch.zeros(maps.shape[0], dtype=torch.long, device=maps.device))
    return {"pointing_game": pointing_game_tolerant(maps, own), "energy": energy_pointing_game(maps, own),
            "class_sensitivity": sensitivity}


def naming_precision(text_maps, naming, mask) -> torch.Tensor:
    """The share of the prompt's k most relevant words that name the object, k = the number of naming words (colour
    and shape: k = 2): Arras et al.'s relevance rank accuracy over the prompt's words ([CLS], [SEP] and padding left
    out), ties shared by expectation. (B,) float; 1 when the naming words are the top-k words. Chance for "a red star":
    2/3 (the top 2 of its 3 words hold both naming words a third of the time, one of them otherwise). ``text_maps``
    None (a method without a text map): NaN for every pair, left out of means."""
    naming, mask = torch.as_tensor(naming).bool(), torch.as_tensor(mask).bool()
    if text_maps is None:
        return torch.full((naming.shape[0],), float("nan"), device=naming.device)
    maps = torch.as_tensor(text_maps).to(naming.device)
    if maps.dim() != 2 or maps.shape != naming.shape or mask.shape != naming.shape:
        raise VitxError(f"text maps {tuple(maps.shape)}, naming words {tuple(naming.shape)} and the token mask "
                        f"{tuple(mask.shape)} must all be (B, L)")
    words = word_columns(mask)
    naming = naming & words
    if not naming.any(1).all():
        raise VitxError(f"prompt {int((~naming.any(1)).nonzero()[0])} has no word naming its object")
    maps = maps.float()
    if not torch.isfinite(maps[words]).all():
        raise VitxError("text maps contain NaN or infinite values")
    floor = maps.masked_fill(~words, float("inf")).amin(1, keepdim=True) - 1    # below every word: never ranked
    ranked = torch.where(words, maps, floor)
    return relevance_rank_accuracy(ranked[:, None], naming[:, None])


def similarity_deletion_insertion(model, x, text: Text, scores, batch_size: int = 32, *,
                                  steps: int | None = None) -> dict[str, torch.Tensor]:
    """Deletion and insertion of image tokens (after Petsiuk, Das & Saenko, BMVC 2018, RISE, Sec. 4.1) on the pair's
    similarity s(x, t), the tokens dropped through the tap (``key_mask``: no query of the image tower attends to a
    dropped patch; the text tower runs untouched).

    The n patch tokens are taken most relevant first (``scores``, stable order), n/``steps`` per step (default
    ``steps`` = the grid's rows: one row of tokens per step, as RISE moves one row of pixels): with
    k_i = ⌊i·n/steps⌋, deletion drops the k_i most relevant tokens (a faithful map makes s fall fast: lower AUC is
    better), insertion keeps only them (the image's prefix tokens alone at k = 0; s should rise fast: higher is
    better).

    Returns ``fractions`` (steps+1,) = k_i / n; ``deletion`` and ``insertion`` (B, steps+1), s at each step in the
    model's own units (its logit scale); ``deletion_auc`` and ``insertion_auc`` (B,) = ∫ s df over f ∈ [0, 1] by the
    trapezoid rule."""
    model = as_model(model)
    if not model.image_text:
        raise VitxError(f"this metric scores (image, prompt) similarities, and this {model.config.kind!r} model "
                        "has none")
    _positive(batch_size, "batch_size")
    layout = model.layout(x)
    x = x.to(model.device, torch.float32)
    if not isinstance(text, Text) or len(text) != x.shape[0]:
        raise VitxError(f"text must be the encoded prompts (model.encode_text), one per image; got "
                        f"{len(text) if isinstance(text, Text) else type(text).__name__} for {x.shape[0]} images")
    n = layout.num_patches
    scores = torch.as_tensor(scores).to(model.device, torch.float32).flatten(1)
    if scores.shape != (x.shape[0], n):
        raise VitxError(f"image scores must hold the {n} patches of each of the {x.shape[0]} images, "
                        f"got {tuple(scores.shape)}")
    steps = layout.grid[0] if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= n:
        raise VitxError(f"steps must be an integer from 1 to {n} (the number of patch tokens), got {steps!r}")
    rank = _rank(scores, descending=True)
    text = text.to(model.device)
    counts = [i * n // steps for i in range(steps + 1)]
    deletion, insertion = [], []
    with evaluating(model), torch.no_grad():
        for k in counts:
            first = rank < k
            deletion.append(_token_logits(model, x, first, layout, batch_size, text)[:, 0].float())
            insertion.append(_token_logits(model, x, ~first, layout, batch_size, text)[:, 0].float())
    fractions = torch.tensor(counts, device=x.device, dtype=torch.float32) / n
    deletion, insertion = torch.stack(deletion, 1), torch.stack(insertion, 1)
    return {"fractions": fractions, "deletion": deletion, "insertion": insertion,
            "deletion_auc": auc(deletion, fractions), "insertion_auc": auc(insertion, fractions)}


_GROUND = ("maps", "masks", "other_masks")
_PERTURB = ("model", "x", "text", "image_scores", "batch_size")
_ZHANG = "Zhang et al., ECCV 2016 / IJCV 2018, with their 15-pixel tolerance at 224 pixels, in the named object's mask"
IMAGE_TEXT_METRICS: dict[str, MetricInfo] = {row.name: row for row in (
    MetricInfo("prompt_pointing_game", object_grounding, _GROUND, "pointing_game", True, _ZHANG),
    MetricInfo("prompt_energy", object_grounding, _GROUND, "energy", True,
               "Wang et al., CVPR-W 2020, in the named object's mask"),
    MetricInfo("prompt_class_sensitivity", object_grounding, _GROUND, "class_sensitivity", True,
               "vitx; the named object against another object of the image"),
    MetricInfo("naming_words_precision", naming_precision, ("text_maps", "naming", "mask"), None, True,
               "Arras, Osman & Samek, Information Fusion 2022, over the prompt's words"),
    MetricInfo("similarity_deletion_auc", similarity_deletion_insertion, _PERTURB, "deletion_auc", False,
               "Petsiuk, Das & Saenko, BMVC 2018; image tokens dropped through the tap"),
    MetricInfo("similarity_insertion_auc", similarity_deletion_insertion, _PERTURB, "insertion_auc", True,
               "Petsiuk, Das & Saenko, BMVC 2018; image tokens dropped through the tap"),
)}


def compute_image_text(names, raw: dict | None = None, **inputs) -> dict[str, torch.Tensor]:
    """Per-pair scores {name: (B,)} of the metrics ``names`` (keys of :data:`IMAGE_TEXT_METRICS`) from ``inputs``
    (model, x, text, image_scores, maps, masks, other_masks, text_maps (None: no text map), naming, mask, batch_size);
    rows sharing a function share one call. ``raw`` receives each metric's whole result (curves too)."""
    return compute_rows(IMAGE_TEXT_METRICS, names, inputs, raw, "(image, prompt) pairs")


__all__ = ["IMAGE_TEXT_METRICS", "compute_image_text", "naming_precision", "object_grounding",
           "similarity_deletion_insertion"]
