"""``vitx.evaluate`` on a bi-modal (VQA) model: every method on the same ``vitx.data.shapes_vqa`` pairs, scored on
both modalities (:mod:`vitx.metrics.bimodal`).

As in Chefer et al.'s tests, each method explains the model's own answer (``target=None``) and the perturbation
tests count how often the answer stays the ground truth. Maps are scored as the methods give them
(``normalize=False``). The reference rows: ``random`` (uniform noise on the pixels and on the question's tokens)
and ``ground-truth`` (the mask of the objects the answer depends on, and the words that name them).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .data.shapes_vqa import ShapesVQAData
from .errors import VitxError
from .evaluate import Evaluation, checked_run, score_methods
from .explain import explain
from .explanation import Explanation
from .metrics import compute_bimodal
from .metrics.bimodal import answered


def evaluate_pairs(model, data: ShapesVQAData, methods="all", metrics=None, *, params: dict | None = None,
                   batch_size: int = 32, seed: int = 0, gallery: int = 4, previous: Evaluation | None = None,
                   progress: bool = False, scored: Callable[[Evaluation], None] | None = None) -> Evaluation:
    """:func:`vitx.evaluate` for a loaded bi-modal ``model`` on ``data`` (its arguments, bar ``sanity_images``).
    ``results`` also holds ``accuracy``, the model's answer accuracy on the pairs, and ``image_left_out``, how
    many pairs have no ground-truth object and so no image ground-truth scores."""
    if tuple(data.answer_names) != tuple(model.config.class_names):
        raise VitxError(f"the model's {model.config.num_classes} answers are not vitx.data.shapes_vqa's "
                        f"{len(data.answer_names)}: evaluate a model trained on that data")
    names, metric_names, params = checked_run(model, data, methods, metrics, params, batch_size)

    device = model.device
    questions = list(data.questions)
    text = model.encode_text(questions, unknown="error").to(device)
    gt_words = _aligned(data, text).to(device)
    x = model.normalize(data.images.to(device))
    answers, masks = data.answers.to(device), data.gt_masks.to(device)
    layout = model.layout(x[:1])
    inputs = {"model": model, "x": x, "text": text, "answers": answers, "masks": masks, "gt_words": gt_words,
              "mask": text.mask, "batch_size": batch_size}
    results = {"model": model.config.name or type(model.net).__name__, "n": len(data), "seed": seed,
               "data_seed": data.seed, "variant": "vqa", "explanations": len(data), "sanity_explanations": 0,
               "accuracy": (answered(model, x, text, batch_size=batch_size) == answers).float().mean().item(),
               "image_left_out": int((~masks.flatten(1).any(1)).sum()), "methods": {}}
    evaluation = Evaluation(results, images=data.images[:gallery].clone(), targets=data.answers[:gallery].clone(),
                            class_names=tuple(data.answer_names), questions=tuple(questions[:gallery]))

    def explained(name: str, settings: dict, count: int) -> dict:
        def run() -> Explanation:
            exp = explain(model, x[:count], name, text=questions[:count], batch_size=batch_size, normalize=False,
                          **settings)
            if exp.text_maps is None:
                raise VitxError(f"{name!r} gave no text map for the questions")
            return exp
        return both_maps(name, count, masks, gt_words, text.mask, seed, layout, run)

    def scored_pairs(name: str, settings: dict, maps: dict, group: list[str]) -> tuple[dict, dict]:
        raw = {}
        return compute_bimodal(group, raw=raw, **inputs, **maps, text_scores=maps["text_maps"]), raw

    score_methods(evaluation, model, names, metric_names, params, len(data), gallery, seed, explained, scored_pairs,
                  previous, progress, scored)
    return evaluation


def both_maps(name: str, count: int, masks: torch.Tensor, gt_words: torch.Tensor, text_mask: torch.Tensor, seed: int,
              layout, run: Callable[[], Explanation]) -> dict:
    """The first ``count`` pairs' maps of a method or reference row on both modalities: ``maps`` (pixels),
    ``image_scores`` (per patch: the method's token map, else the pixel map's mean over each patch) and ``text_maps``
    (per token, or None). ``random``: uniform noise on the pixels and on the text's tokens (``seed``);
    ``ground-truth``: ``masks`` and ``gt_words``; a method: the :class:`Explanation` that ``run`` gives."""
    rows = slice(0, count)
    if name == "random":
        generator = torch.Generator().manual_seed(seed)
        maps = torch.rand(masks[rows].shape, generator=generator).to(masks.device)
        words = torch.rand(text_mask[rows].shape, generator=generator).to(masks.device) * text_mask[rows]
    elif name == "ground-truth":
        maps, words = masks[rows].float(), gt_words[rows].float()
    else:
        exp = run()
        maps, words = exp.maps, exp.text_maps
        if exp.token_maps is not None:
            return {"maps": maps, "image_scores": exp.token_maps.flatten(1), "text_maps": words}
    patches = F.adaptive_avg_pool2d(maps[:, None], layout.grid)[:, 0]    # the mean over each patch
    return {"maps": maps, "image_scores": patches.flatten(1), "text_maps": words}


def _aligned(data: ShapesVQAData, text) -> torch.Tensor:
    """The data's ground-truth words on the columns of the model's encoding of its questions (B, L)."""
    if not torch.equal(text.mask.sum(1).cpu(), data.attention_mask.sum(1).cpu()):
        raise VitxError("the model splits the questions into other tokens than the data's word tokenizer, so the "
                        "ground-truth words cannot be placed on its tokens")
    gt = torch.zeros(text.mask.shape, dtype=torch.bool)
    width = min(gt.shape[1], data.gt_words.shape[1])
    gt[:, :width] = data.gt_words[:, :width].bool()
    return gt


__all__ = ["both_maps", "evaluate_pairs"]
