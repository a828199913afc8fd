"""Faithfulness by perturbation: remove or insert pixels (or tokens) in order of relevance and watch the
model's output for the target class. Every perturbation step is one batched forward pass over the whole
batch (split into chunks of ``batch_size`` images only to bound memory).

Shared conventions: ``x`` (B, 3, H, W) is the normalised model input (``model.preprocess``), ``targets``
(B,) the class ids explained, ``maps`` (B, H, W) pixel relevance (higher = more relevant, any sign and
scale). Pixels are ranked by relevance with ties kept in row-major pixel order (a stable sort). The
target's probability is its softmax probability, or its sigmoid for a multi-label model; "correct" is
1 when the target is the arg-max class (for a multi-label model: when the target's logit is > 0, i.e. it
is predicted present). Curves are (B, steps) per image; :func:`auc` integrates them by the trapezoid rule.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import VitxError
from ..model import Model, as_model, evaluating
from ..text import Text
from ..trace import trace
from .checks import as_maps, as_targets, choice

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ORDERS = ("positive", "negative")
REMOVALS = ("zero", "mean", "blur", "tokens")
PIXEL_REMOVALS = ("zero", "mean", "blur")


def perturbation_test(model, x, targets, maps, order: str = "positive", removal: str = "zero",
                      fractions: Sequence[float] = FRACTIONS, *, blur_sigma: float = 5.0,
                      batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Positive / negative perturbation test (Chefer, Gur & Wolf, CVPR 2021, Transformer Interpretability
    Beyond Attention Visualization, Sec. 4; their ``pertubation_eval_from_hdf5.py``).

    For each fraction f in ``fractions`` (10%, 20%, …, 90%), remove the k = ⌊f·n⌋ highest-ranked of the
    n = H·W pixels from the original image and classify the result. ``order="positive"`` ranks the most
    relevant first (a faithful map makes the accuracy fall fast: lower AUC is better); ``"negative"``
    ranks the least relevant first (the accuracy should hold: higher AUC is better).

    ``removal``: what a removed pixel becomes.
      - ``"zero"`` (default, the reference code): 0 in [0, 1] image space, i.e. the normalised value
        (0 − mean) / std, black;
      - ``"mean"``: the model's normalisation mean, 0 in the normalised input;
      - ``"blur"``: the same pixel of a Gaussian-blurred copy of the image (σ = ``blur_sigma`` pixels,
        a (2⌈σ⌉+1)² kernel, edges replicated; σ = 5 gives RISE's 11×11 kernel);
      - ``"tokens"``: drop whole patch tokens instead of pixels: tokens are ranked by the mean of the map
        over their pixels, k = ⌊f·n⌋ of the n patch tokens are removed as attention keys in every block
        (the tap's ``key_mask``; no query attends to them), prefix tokens (class, distillation, registers)
        are always kept.

    Returns a dict: ``fractions`` (S+1,) = 0 then ``fractions``; ``correct`` (B, S+1) 1.0/0.0, the
    target top-1 correct at each point, the unperturbed image first; ``probability`` (B, S+1) the
    target probability; ``auc`` (B,) = 100 · ∫ correct df by the trapezoid rule over f = 0, 0.1, …, 0.9
    (percent: its mean over images is exactly the dataset AUC of the paper's tables, :func:`dataset_auc`);
    ``probability_auc`` (B,) = ∫ probability df, the same integral of the probability curve.
    """
    model = as_model(model)
    x, maps, targets, layout = _inputs(model, x, targets, maps)
    choice(order, ORDERS, "perturbation order")
    choice(removal, REMOVALS, "removal")
    fractions = _fractions(fractions)
    _positive(batch_size, "batch_size")
    B, _, H, W = x.shape
    if removal == "tokens":
        ph, pw = layout.patch_size
        gh, gw = layout.grid
        scores = maps.view(B, gh, ph, gw, pw).mean((2, 4)).flatten(1)
    else:
        scores = maps.flatten(1)
    rank = _rank(scores, descending=order == "positive")
    n = scores.shape[1]
    baseline = None if removal == "tokens" else _baseline(model, x, removal, blur_sigma)
    correct, probability = [], []
    with evaluating(model), torch.no_grad():
        for f in (0.0,) + fractions:
            removed = rank < math.floor(f * n + 1e-9)
            if removal == "tokens":
                logits = _token_logits(model, x, removed, layout, batch_size)
            else:
                pixels = removed.view(B, 1, H, W)
                logits = _logits(model, lambda s, e: torch.where(pixels[s:e], baseline[s:e], x[s:e]), B, batch_size)
            p, c = _target_scores(model, logits, targets)
            probability.append(p)
            correct.append(c)
    steps = torch.tensor((0.0,) + fractions, device=x.device)
    correct, probability = torch.stack(correct, 1), torch.stack(probability, 1)
    return {"fractions": steps, "correct": correct, "probability": probability,
            "auc": 100 * auc(correct, steps), "probability_auc": auc(probability, steps)}


def insertion_deletion(model, x, targets, maps, steps: int | None = None, *, removal: str = "mean",
                       start: str = "blur", blur_sigma: float = 5.0, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Insertion and deletion (Petsiuk, Das & Saenko, BMVC 2018, RISE, Sec. 4.1; their ``evaluation.py``).

    Pixels are taken most relevant first, n/``steps`` per step. With k_i = ⌊i·n/steps⌋, i = 0 … steps
    (n = H·W pixels):
      - deletion: the image with its k_i most relevant pixels set to the ``removal`` baseline (default
        ``"mean"``: 0 in the normalised input, as RISE's code zeroes the normalised tensor; or ``"zero"``,
        ``"blur"`` as in :func:`perturbation_test`); a faithful map makes the probability fall fast:
        lower AUC is better;
      - insertion: the ``start`` image (default ``"blur"``, the paper's Gaussian-blurred copy, σ =
        ``blur_sigma``; or ``"zero"``, ``"mean"``) with the k_i most relevant original pixels put back;
        the probability should rise fast: higher AUC is better.

    ``steps`` defaults to H, so that each step moves W pixels: one image row's worth, as RISE's 224
    pixels per step on 224×224 images. Each step is one forward pass over the deletion and insertion
    images of the batch together (chunks of ⌈batch_size/2⌉ images, at most ``batch_size`` inputs).

    Returns a dict: ``fractions`` (steps+1,) = k_i / n; ``deletion`` and ``insertion`` (B, steps+1) the
    target probability at each step (the unperturbed image is the first point of deletion and the last
    of insertion); ``deletion_auc`` and ``insertion_auc`` (B,) = ∫ probability df over f ∈ [0, 1] by the
    trapezoid rule (RISE's normalised AUC).
    """
    model = as_model(model)
    x, maps, targets, _ = _inputs(model, x, targets, maps)
    choice(removal, PIXEL_REMOVALS, "removal")
    choice(start, PIXEL_REMOVALS, "insertion start")
    _positive(batch_size, "batch_size")
    B, _, H, W = x.shape
    n = H * W
    steps = H if steps is None else steps
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= n:
        raise VitxError(f"steps must be an integer from 1 to {n} (the number of pixels), got {steps!r}")
    rank = _rank(maps.flatten(1), descending=True)
    deleted = _baseline(model, x, removal, blur_sigma)
    substrate = _baseline(model, x, start, blur_sigma)
    chunk = max(1, batch_size // 2)
    counts = [i * n // steps for i in range(steps + 1)]
    deletion, insertion = [], []
    with evaluating(model), torch.no_grad():
        for k in counts:
            pixels = (rank < k).view(B, 1, H, W)

            def pair(s, e):
                changed = pixels[s:e]
                return torch.cat([torch.where(changed, deleted[s:e], x[s:e]),
                                  torch.where(changed, x[s:e], substrate[s:e])])
            logits = _logits(model, pair, B, chunk, paired=True)
            p, _ = _target_scores(model, logits, torch.cat([targets, targets]))
            deletion.append(p[:B])
            insertion.append(p[B:])
    fractions = torch.tensor(counts, device=x.device, dtype=torch.float32) / n
    deletion, insertion = torch.stack(deletion, 1), torch.stack(insertion, 1)
    return {"fractions": fractions, "deletion": deletion, "insertion": insertion,
            "deletion_auc": auc(deletion, fractions), "insertion_auc": auc(insertion, fractions)}


def auc(curve: torch.Tensor, x=None) -> torch.Tensor:
    """Area under per-image curves (B, S) (or one curve (S,)) by the trapezoid rule over abscissae ``x``
    (S,); ``x`` defaults to the perturbation test's 0, 0.1, …, 0.9."""
    x = _abscissae(curve, x)
    return torch.trapezoid(curve.to(x.dtype), x=x, dim=-1)


def dataset_auc(curve: torch.Tensor, x=None) -> float:
    """The dataset-level AUC in percent of Chefer et al.'s tables: 100 × the trapezoid integral of the mean
    over images of the curves (B, S), e.g. ``correct`` from :func:`perturbation_test` (equal to the mean
    of its per-image ``auc``)."""
    if not isinstance(curve, torch.Tensor) or curve.dim() != 2 or curve.shape[0] == 0:
        raise VitxError(f"curves must be a (B, S) tensor, got {getattr(curve, 'shape', type(curve).__name__)}")
    return float(100 * auc(curve.double().mean(0), x))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of (B, C, H, W) with a Gaussian of σ = ``sigma`` pixels: a separable kernel of
    2⌈σ⌉+1 taps (RISE's 11 for σ = 5), normalised to sum 1, edges replicated."""
    if not sigma > 0:
        raise VitxError(f"blur_sigma must be positive, got {sigma!r}")
    radius = math.ceil(sigma)
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    C = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _inputs(model: Model, x, targets, maps):
    layout = model.layout(x)
    x = x.to(model.device, torch.float32)
    maps = as_maps(maps)
    if maps.shape != (x.shape[0], *x.shape[-2:]):
        raise VitxError(f"maps {tuple(maps.shape)} do not match the input {tuple(x.shape)}: "
                        f"expected ({x.shape[0]}, {x.shape[2]}, {x.shape[3]})")
    targets = as_targets(targets, x.shape[0], model.config.num_classes, x.device)
    return x, maps.to(x.device), targets, layout


def _fractions(fractions) -> tuple[float, ...]:
    values = tuple(float(f) for f in fractions)
    if not values or any(not 0 <= f <= 1 for f in values):
        raise VitxError(f"fractions must be values in [0, 1], got {fractions!r}")
    return values


def _positive(value, name: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise VitxError(f"{name} must be a positive integer, got {value!r}")


def _rank(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Each element's position (0 = first removed) in the stable order of ``scores`` per row."""
    order = torch.argsort(scores, dim=1, descending=descending, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _baseline(model: Model, x: torch.Tensor, removal: str, sigma: float) -> torch.Tensor:
    """What removed pixels become, in the normalised input space, broadcastable against x."""
    if removal == "zero":
        return model.normalize(torch.zeros(1, x.shape[1], 1, 1, device=x.device)).expand_as(x)
    if removal == "mean":
        return torch.zeros_like(x)
    # normalisation is affine per channel and the kernel sums to 1: blurring the normalised input equals
    # normalising the blurred image
    return gaussian_blur(x, sigma)


def _logits(model: Model, build: Callable[[int, int], torch.Tensor], count: int, batch_size: int,
            paired: bool = False) -> torch.Tensor:
    """Logits of ``build(start, end)`` over chunks of images; ``paired``: each chunk holds two inputs per
    image (first halves, then second halves), reassembled as [all first; all second]."""
    outs = [model(build(s, min(s + batch_size, count))) for s in range(0, count, batch_size)]
    if not paired:
        return torch.cat(outs)
    halves = [o.chunk(2) for o in outs]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


def _token_logits(model: Model, x: torch.Tensor, removed: torch.Tensor, layout, batch_size: int,
                  text: Text | None = None) -> torch.Tensor:
    """Logits of ``x`` (with an image-text model's or a bi-modal model's ``text``, row by row) with the patch tokens
    ``removed`` (B, n) dropped as keys through the tap."""
    keep = layout.key_mask(~removed) if removed.any() else None
    outs = []
    for s in range(0, x.shape[0], batch_size):
        rows = slice(s, s + batch_size)
        tapped = nullcontext() if keep is None else trace(model, attentions=False, tokens=False, key_mask=keep[rows])
        with tapped:
            outs.append(model(x[rows]) if text is None else model(x[rows], text[rows]))
    return torch.cat(outs)


def _target_scores(model: Model, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability, correct) of each image's target, both (B,) float."""
    logits = logits.float()
    own = logits.gather(1, targets[:, None])[:, 0]
    if model.config.multi_label:
        return torch.sigmoid(own), (own > 0).float()
    return logits.softmax(1).gather(1, targets[:, None])[:, 0], (logits.argmax(1) == targets).float()


def _abscissae(curve, x) -> torch.Tensor:
    if not isinstance(curve, torch.Tensor) or curve.dim() not in (1, 2):
        raise VitxError(f"a curve must be a (S,) or (B, S) tensor, got {getattr(curve, 'shape', type(curve).__name__)}")
    x = torch.tensor((0.0,) + FRACTIONS) if x is None else torch.as_tensor(x)
    x = x.to(curve.device, torch.float64 if curve.dtype == torch.float64 else torch.float32)
    if x.dim() != 1 or x.shape[0] != curve.shape[-1]:
        raise VitxError(f"a curve of {curve.shape[-1]} points needs {curve.shape[-1]} abscissae, got {tuple(x.shape)}")
    return x
