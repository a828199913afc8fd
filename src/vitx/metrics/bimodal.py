"""Scores of bi-modal (VQA) explanations, one value per (image, question) pair: Chefer et al.'s perturbation tests
per modality, and ground truth on both modalities.

Conventions: ``x`` (B, 3, H, W) the normalised images, ``text`` their questions encoded for the model
(:class:`~vitx.text.Text`, ``[CLS] words [SEP]`` then padding), ``answers`` (B,) the ground-truth answer ids.
Image relevance is per patch (B, gh, gw) or (B, N) for the perturbation tests and per pixel (B, H, W) for the
pointing game and energy; text relevance is per column of ``text`` (B, L). A question's *words* are its tokens
other than [CLS] and [SEP]. Ties in a ranking keep column order (a stable sort); the text ground-truth scores
resolve ties by expectation, as the pointing game does.
"""
from __future__ import annotations

import torch

from ..errors import VitxError
from ..model import as_model, evaluating
from ..text import Text
from .checks import as_maps, as_masks, as_targets, choice
from .localisation import energy_pointing_game, pointing_game_tolerant
from .perturbation import ORDERS, _rank, auc
from .registry import MetricInfo, compute_rows

IMAGE_STEPS = (0.0, 0.5, 0.75, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)   # fractions of patches removed (the authors')
TEXT_STEPS = (0.0, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)     # fractions of words removed (their code's)
STEPS = {"image": IMAGE_STEPS, "text": TEXT_STEPS}
CHEFER_ICCV = "Chefer, Gur & Wolf, ICCV 2021"


def kept_count(n: int, step: float) -> int:
    """Tokens kept of ``n`` when the fraction ``step`` is removed: int((1 − step)·n), as the authors' code counts."""
    return int((1 - step) * n)


def word_columns(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the columns of each question's words, i.e. its tokens (``mask``) but [CLS] (column 0) and
    [SEP] (its last token)."""
    columns = torch.arange(mask.shape[1], device=mask.device)
    return mask & (columns > 0) & (columns < mask.sum(1, keepdim=True) - 1)


def answered(model, x: torch.Tensor, text: Text, keep: torch.Tensor | None = None,
             batch_size: int = 32) -> torch.Tensor:
    """The model's answers (B,) to ``text`` about ``x`` (keeping the image patches ``keep``), in chunks."""
    outs = []
    with evaluating(model), torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            rows = slice(s, s + batch_size)
            outs.append(model(x[rows], text[rows], None if keep is None else keep[rows]).argmax(1))
    return torch.cat(outs)


def perturbation_bimodal(model, x, text: Text, answers, scores, batch_size: int = 32, *, modality: str = "image",
                         order: str = "positive", steps=None) -> dict[str, torch.Tensor]:
    """Chefer et al.'s perturbation test of one modality of a VQA model (ICCV 2021, Sec. 4; their
    ``lxmert/lxmert/perturbation.py``): tokens are deleted, not masked.

    At each step f (default: image 0, .5, .75, .95, .96, .97, .98, .99, 1; text 0, .25, .5, .75, .8, .85, .9,
    .95, 1), of a pair's n tokens (image: its patches; text: its question's words) k = int((1 − f)·n) are kept:
    ``order="positive"`` removes the most relevant first (lower AUC is better), ``"negative"`` the least
    relevant first (higher is better). Image: the forward keeps only those patches (``model(x, text, keep=…)``);
    text: the question keeps [CLS], [SEP] and those words in their order (:meth:`Text.keep`). All pairs of a chunk
    of ``batch_size`` go through one forward per step.

    Returns ``fractions`` (S,) the steps; ``correct`` (B, S) 1.0 where the answer is the ground truth; ``auc``
    (B,) = 100 · ∫ correct df by the trapezoid rule over the steps' fractions (percent; its mean over pairs is the
    area under the mean accuracy curve).
    """
    model = as_model(model)
    if not model.bimodal:
        raise VitxError(f"the bi-modal perturbation test needs a model that reads questions; this "
                        f"{model.config.kind!r} model reads images only")
    choice(modality, tuple(STEPS), "modality")
    choice(order, ORDERS, "perturbation order")
    steps = _steps(STEPS[modality] if steps is None else steps)
    if not isinstance(text, Text) or len(text) != x.shape[0]:
        raise VitxError(f"text must be the encoded questions (model.encode_text), one per image; got "
                        f"{len(text) if isinstance(text, Text) else type(text).__name__} for {x.shape[0]} images")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VitxError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = model.device
    x, text = x.to(device, torch.float32), text.to(device)
    answers = as_targets(answers, x.shape[0], model.config.num_classes, device)
    scores = torch.as_tensor(scores).to(device, torch.float32).flatten(1)
    positive = order == "positive"
    if modality == "image":
        n = model.layout(x).num_patches
        if scores.shape != (x.shape[0], n):
            raise VitxError(f"image scores must hold the {n} patches of each of the {x.shape[0]} images, "
                            f"got {tuple(scores.shape)}")
        rank = _rank(scores, descending=positive)              # position in the removal order
    else:
        if scores.shape != text.ids.shape:
            raise VitxError(f"text scores must be (B, L) = {tuple(text.ids.shape)} like the encoded questions, "
                            f"got {tuple(scores.shape)}")
        words = word_columns(text.mask)
        n = words.sum(1)
        rank = _rank(scores.masked_fill(~words, float("-inf") if positive else float("inf")), descending=positive)
    correct = []
    for step in steps:
        if modality == "image":
            k = kept_count(n, step)
            keep = None if k == n else (rank >= n - k).nonzero()[:, 1].view(x.shape[0], k)
            predicted = answered(model, x, text, keep, batch_size)
        else:
            k = torch.tensor([kept_count(m, step) for m in n.tolist()], device=device)
            kept = (text.mask & ~words) | (words & (rank >= (n - k)[:, None]))
            predicted = answered(model, x, text.keep(kept), None, batch_size)
        correct.append((predicted == answers).float())
    fractions = torch.tensor(steps, device=device)
    correct = torch.stack(correct, 1)
    return {"fractions": fractions, "correct": correct, "auc": 100 * auc(correct, fractions)}


def image_grounding(maps, masks) -> dict[str, torch.Tensor]:
    """Ground truth on the image: ``pointing_game`` (B,) with Zhang et al.'s tolerance
    (:func:`~vitx.metrics.pointing_game_tolerant`) and ``energy`` (B,) the share of positive relevance inside the
    mask (:func:`~vitx.metrics.energy_pointing_game`), against ``masks`` (B, H, W), the union of the objects the
    answer depends on. Pairs whose mask is empty (no such object: "is there a red star?" "no", a count of 0) get
    NaN, and are left out of means."""
    maps = as_maps(maps)
    masks = as_masks(masks, maps)
    present = masks.flatten(1).any(1)
    out = {key: torch.full((maps.shape[0],), float("nan"), device=maps.device) for key in ("pointing_game", "energy")}
    if present.any():
        out["pointing_game"][present] = pointing_game_tolerant(maps[present], masks[present])
        out["energy"][present] = energy_pointing_game(maps[present], masks[present])
    return out


def text_grounding(text_maps, gt_words, mask) -> dict[str, torch.Tensor]:
    """Ground truth on the question, over its words only ([CLS] and [SEP] left out):

    - ``top1`` (B,): 1 when the most relevant word names a ground-truth object (``gt_words``); where several words
      share the maximum, the share of them that do (the expected hit of a random pick);
    - ``rank`` (B,): the rank of the best-ranked ground-truth word (1 = the top word): 1 + the other words above it,
      ties counted by expectation ((t + u + 1)/(t + 1) for t ground-truth and u other words tied at its value).

    ``text_maps`` (B, L) relevance per column, ``gt_words`` and ``mask`` (B, L) bool. NaN for a question without a
    ground-truth word. Higher top1 and lower rank are better; chance is |gt| / words for top1."""
    maps = torch.as_tensor(text_maps)
    if maps.dim() != 2 or not maps.is_floating_point():
        raise VitxError(f"text maps must be a (B, L) float tensor, got {getattr(maps, 'shape', type(maps).__name__)}")
    if not torch.isfinite(maps).all():
        raise VitxError("text maps contain NaN or infinite values")
    gt_words, mask = torch.as_tensor(gt_words).to(maps.device), torch.as_tensor(mask).to(maps.device)
    if gt_words.shape != maps.shape or mask.shape != maps.shape:
        raise VitxError(f"text maps {tuple(maps.shape)}, ground-truth words {tuple(gt_words.shape)} and the token "
                        f"mask {tuple(mask.shape)} must have the same shape")
    words = word_columns(mask.bool())
    gt = gt_words.bool() & words
    others = words & ~gt
    best = maps.masked_fill(~gt, float("-inf")).amax(1, keepdim=True)
    tied = lambda among: (among & (maps == best)).sum(1).float()       # noqa: E731
    rank = (others & (maps > best)).sum(1).float() + (tied(gt) + tied(others) + 1) / (tied(gt) + 1)
    peak = maps.masked_fill(~words, float("-inf")).amax(1, keepdim=True)
    top = words & (maps == peak)
    top1 = (top & gt).sum(1).float() / top.sum(1).clamp(min=1).float()
    missing = ~gt.any(1)
    nan = torch.full_like(rank, float("nan"))
    return {"top1": torch.where(missing, nan, top1), "rank": torch.where(missing, nan, rank)}


_PERTURB = ("model", "x", "text", "answers")
_PERTURB_SOURCE = f"{CHEFER_ICCV}; tokens deleted"
BIMODAL_METRICS: dict[str, MetricInfo] = {row.name: row for row in (
    MetricInfo("image_positive_auc", perturbation_bimodal, _PERTURB + ("image_scores", "batch_size"), "auc", False,
               _PERTURB_SOURCE, {"modality": "image", "order": "positive"}),
    MetricInfo("image_negative_auc", perturbation_bimodal, _PERTURB + ("image_scores", "batch_size"), "auc", True,
               _PERTURB_SOURCE, {"modality": "image", "order": "negative"}),
    MetricInfo("text_positive_auc", perturbation_bimodal, _PERTURB + ("text_scores", "batch_size"), "auc", False,
               _PERTURB_SOURCE, {"modality": "text", "order": "positive"}),
    MetricInfo("text_negative_auc", perturbation_bimodal, _PERTURB + ("text_scores", "batch_size"), "auc", True,
               _PERTURB_SOURCE, {"modality": "text", "order": "negative"}),
    MetricInfo("image_pointing_game", image_grounding, ("maps", "masks"), "pointing_game", True,
               "Zhang et al., ECCV 2016 / IJCV 2018, with their 15-pixel tolerance at 224 pixels"),
    MetricInfo("image_energy", image_grounding, ("maps", "masks"), "energy", True, "Wang et al., CVPR-W 2020"),
    MetricInfo("text_top1", text_grounding, ("text_maps", "gt_words", "mask"), "top1", True, "vitx"),
    MetricInfo("text_rank", text_grounding, ("text_maps", "gt_words", "mask"), "rank", False, "vitx"),
)}


def compute_bimodal(names, raw: dict | None = None, **inputs) -> dict[str, torch.Tensor]:
    """Per-pair scores {name: (B,)} of the metrics ``names`` (keys of :data:`BIMODAL_METRICS`) from ``inputs``
    (model, x, text, answers, image_scores, text_scores, maps, masks, text_maps, gt_words, mask, batch_size); rows
    sharing a function and parameters share one call. ``raw`` receives each metric's whole result (curves too)."""
    return compute_rows(BIMODAL_METRICS, names, inputs, raw, "(image, question) pairs")


def _steps(steps) -> tuple[float, ...]:
    values = tuple(float(s) for s in steps)
    if not values or any(not 0 <= s <= 1 for s in values) or list(values) != sorted(values):
        raise VitxError(f"perturbation steps must be increasing fractions in [0, 1], got {steps!r}")
    return values
