"""Perturbation methods: how the prediction changes when part of the input is taken away.

Notation: y the logits, t the target class, CE(y, t) = −log softmax(y)_t, P the number of patches, f_t the
target score (y_t, or softmax(y)_t with ``score="probability"``), x' the baseline image (``baseline``:
"zeros" is 0 in model input space, the dataset's mean colour; "black"; or a grey level in [0, 1]).
v(S) = f_t(x with the patches outside S removed) is the value of a coalition S of patches: removed by the
baseline (x' on their pixels) or, the ViT-native way, by masking their keys in every attention layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..batch import Batch
from ..errors import VitxError
from ..layout import TokenLayout
from ..memory import COPY, FORWARD, graphs
from ..registry import ANY_MODEL, register
from ..shapley import constrained_least_squares, sample_coalitions
from .gradient import baseline_for

DEISEROTH_2023 = ("Deiseroth et al., NeurIPS 2023, AtMan: Understanding Transformer Predictions Through Memory "
                  "Efficient Attention Manipulation")
ZEILER_2014 = "Zeiler & Fergus, ECCV 2014, Visualizing and Understanding Convolutional Networks"
PETSIUK_2018 = "Petsiuk, Das & Saenko, BMVC 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
LUNDBERG_2017 = "Lundberg & Lee, NeurIPS 2017, A Unified Approach to Interpreting Model Predictions"
SCORES = ("logit", "probability")
REMOVALS = ("baseline", "attention")


def suppression_scales(tokens: torch.Tensor, layout: TokenLayout, suppression: float, threshold: float) -> torch.Tensor:
    """(P, B, N) factors on the pre-softmax scores of each key token, one row per suppressed patch i:
    1 − p for i itself, 1 − p·cos(e_i, e_k) for every other patch k with cos(e_i, e_k) ≥ κ, 1 elsewhere
    (prefix tokens included), e the patch tokens of ``tokens`` (B, N, D)."""
    if not 0 <= suppression <= 1:
        raise VitxError(f"suppression must be in [0, 1], got {suppression}")
    if not 0 <= threshold <= 1:
        raise VitxError(f"threshold must be in [0, 1], got {threshold}")
    patches = F.normalize(tokens[:, layout.patches], dim=-1)
    similarity = (patches @ patches.transpose(1, 2)).clamp(max=1)                         # (B, P, P)
    eye = torch.eye(similarity.shape[-1], dtype=torch.bool, device=similarity.device)
    weight = torch.where(eye, 1.0, similarity * (similarity >= threshold))
    scales = torch.ones(*similarity.shape[:2], tokens.shape[1], dtype=tokens.dtype, device=tokens.device)
    scales[:, :, layout.patches] = 1 - suppression * weight
    return scales.transpose(0, 1)


def target_loss(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """CE(y, t) of each image; ``logits`` may hold several copies of the batch stacked along dim 0."""
    return F.cross_entropy(logits, batch.targets.repeat(logits.shape[0] // batch.targets.shape[0]), reduction="none")


@register("atman", family="perturbation", paper=DEISEROTH_2023, needs={"attention"}, cost="(1+P)F",
          memory=graphs(FORWARD, COPY))
def atman(batch: Batch, suppression: float = 0.9, threshold: float = 0.7,
          internal_batch_size: int = 64) -> torch.Tensor:
    """AtMan: R_i = CE(y(x; H̃ⁱ), t) − CE(y(x), t), where H̃ⁱ scales the pre-softmax attention scores of key
    token k in every block and head by 1 − p·w_ik: w_ii = 1, w_ik = cos(e_i, e_k) for the patches k with
    cos(e_i, e_k) ≥ κ (correlated token suppression), 0 elsewhere. The paper's p = 0.9 and κ = 0.7.

    The embeddings e compared are the tokens leaving the first block: the paper compares the input
    embeddings of its language model, and the first block's output is the earliest the tap records. As in
    the paper's equation and the authors' BLIP code, the raw scores are multiplied (their MAGMA code first
    shifts each row's minimum to 0). The P suppressed copies of the batch run ``internal_batch_size`` images a pass."""
    with torch.no_grad():
        logits, tr = batch.run(attentions=False)
        scales = suppression_scales(tr.tokens[0], batch.layout, suppression, threshold)
        losses = []
        for chunk in scales.split(batch.copies_per_pass(internal_batch_size)):
            suppressed, _ = batch.run(batch.x.repeat(len(chunk), 1, 1, 1), attentions=False, tokens=False,
                                      key_scale=chunk.flatten(0, 1))
            losses.append(target_loss(batch, suppressed).view(len(chunk), -1))
        relevance = torch.cat(losses) - target_loss(batch, logits)
    return batch.layout.to_grid(relevance.T)


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise VitxError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")


def one_score(config, score: str) -> None:
    """An image-text pair has one score, its similarity: ``score="probability"`` (a softmax over classes) is refused."""
    if config.kind == "clip" and score == "probability":   # None: the method's own default for the kind
        raise VitxError("an image-text pair has one score, its similarity, and no classes to take a softmax over: "
                        "use score='logit'")


def target_scores(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """f_t of each row of ``logits`` for ``targets`` (rows,): y_t (``score="logit"``) or softmax(y)_t
    (``"probability"``)."""
    if score == "probability":
        logits = logits.softmax(-1)
    return logits.gather(1, targets[:, None])[:, 0]


def unmodified_scores(batch: Batch, score: str) -> torch.Tensor:
    """f_t of the batch's own images, (B,), from its first forward (run now if it has not run yet)."""
    if batch.logits is None:
        batch.run(attentions=False, tokens=False)
    return target_scores(batch.logits, batch.targets, score)


def patch_pixels(patches: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """(..., P) values per patch -> (..., H, W) float, each patch's value on its pixels."""
    ph, pw = layout.patch_size
    grid = patches.reshape(*patches.shape[:-1], *layout.grid).float()
    return grid.repeat_interleave(ph, -2).repeat_interleave(pw, -1)


def keep_pixels(start: torch.Tensor, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x' + M ⊙ (x − x'): the images ``x`` (B, 3, H, W) where ``masks`` (k, B or 1, H, W) are 1, the baseline
    ``start`` where they are 0; (k, B, 3, H, W)."""
    return start + masks[:, :, None] * (x - start)


def check_removal(removal: str, cls_index: int | None) -> None:
    """``removal`` is one of REMOVALS, and "attention" only on a model with a class token."""
    check_choice("removal", removal, REMOVALS)
    if removal == "attention" and cls_index is None:
        raise VitxError("removal='attention' keeps removed patches out of the class token, and this model has none "
                        "(its output pools the patch tokens, removed ones included): use removal='baseline'")


def removal_fits(config, params: dict) -> None:
    """``requires`` for the methods that remove patches: :func:`check_removal` and :func:`one_score` before any
    forward."""
    if config.kind == "detr" and params["removal"] == "attention":
        raise VitxError("removal='attention' keeps removed patches out of the class token, and a detector's objects "
                        "are its queries, which read the image through cross-attention: use removal='baseline'")
    check_removal(params["removal"], config.cls_index)
    one_score(config, params["score"])


def coalition_values(batch: Batch, keep: torch.Tensor, removal: str = "baseline", baseline="zeros",
                     score: str = "logit", internal_batch_size: int = 64) -> torch.Tensor:
    """(K, B) v(S_k) of each image: f_t with the patches outside coalition S_k removed. ``keep`` (K, P) bool
    holds K coalitions shared by the images, or (K, B, P) one per image.

    ``removal="baseline"``: x_S = x' + m_S ⊙ (x − x'), m_S = 1 on the pixels of S's patches. ``"attention"``:
    the images themselves, the pre-softmax score of every key outside S (prefix tokens always kept) set to
    −∞ in every block and head; no token in S, nor the class token, then sees a removed patch (for the class
    token's output this equals dropping the removed tokens from the sequence). The K copies run
    ``internal_batch_size`` images a pass."""
    check_removal(removal, batch.layout.cls_index)
    check_choice("score", score, SCORES)
    layout, x = batch.layout, batch.x
    P, B = layout.num_patches, x.shape[0]
    if keep.dim() not in (2, 3) or keep.shape[-1] != P or keep.dim() == 3 and keep.shape[1] != B:
        raise VitxError(f"coalitions must be (K, {P}) or (K, {B}, {P}) for {B} images of {P} patches, "
                        f"got shape {tuple(keep.shape)}")
    start = baseline_for(batch, baseline) if removal == "baseline" else None
    keep = keep.to(x.device).reshape(keep.shape[0], -1, P).expand(-1, B, -1)
    values = []
    for chunk in keep.split(batch.copies_per_pass(internal_batch_size)):
        if removal == "attention":
            logits, _ = batch.run(x.repeat(len(chunk), 1, 1, 1), attentions=False, tokens=False,
                                  key_mask=layout.key_mask(chunk).flatten(0, 1))
        else:
            inputs = keep_pixels(start, x, patch_pixels(chunk, layout))
            logits, _ = batch.run(inputs.flatten(0, 1), attentions=False, tokens=False)
        values.append(target_scores(logits, batch.targets.repeat(len(chunk)), score).view(len(chunk), -1))
    return torch.cat(values)


def occlusion_windows(grid: tuple[int, int], window: int, stride: int) -> torch.Tensor:
    """(W, gh, gw) bool: the windows of ``window``×``window`` patches, top-left corners at multiples of ``stride``
    along each axis up to the first that reaches the grid's edge, the last one cut by the edge (captum's
    placement): ⌈(g − window)/stride⌉ + 1 positions along an axis of g patches."""
    if not 1 <= window <= min(grid):
        raise VitxError(f"window must be 1..{min(grid)} patches for this {grid[0]}x{grid[1]} patch grid, got {window}")
    if not 1 <= stride <= window:
        raise VitxError(f"stride must be 1..window ({window}) patches, else some patches are never occluded; "
                        f"got {stride}")

    def spans(length: int) -> torch.Tensor:
        starts = torch.arange(math.ceil((length - window) / stride) + 1)[:, None] * stride
        position = torch.arange(length)
        return (position >= starts) & (position < starts + window)
    rows, cols = spans(grid[0]), spans(grid[1])
    return (rows[:, None, :, None] & cols[None, :, None, :]).flatten(0, 1)


@register("occlusion", family="perturbation", paper=ZEILER_2014, cost="(1+windows)F", kinds=(*ANY_MODEL, "clip", "detr", "hvt"),
          memory=graphs(FORWARD, COPY), requires=removal_fits)
def occlusion(batch: Batch, window: int = 2, stride: int = 1, removal: str = "baseline", baseline="zeros",
              score: str = "logit", internal_batch_size: int = 64) -> torch.Tensor:
    """Occlusion: R_j = mean over the windows W ∋ j of v(N) − v(N ∖ W), windows of ``window``×``window``
    patches every ``stride`` patches, removed by the baseline (the patch-aligned case of captum's Occlusion)
    or by attention masking. Defaults: 2×2-patch windows at stride 1 (Zeiler & Fergus slid grey squares with
    overlap); x' = 0 in model input space (the mean colour, captum's default baseline)."""
    windows = occlusion_windows(batch.layout.grid, window, stride).flatten(1).to(batch.x.device)
    with torch.no_grad():
        occluded = coalition_values(batch, ~windows, removal, baseline, score, internal_batch_size)
        drops = unmodified_scores(batch, score) - occluded
    windows = windows.to(drops.dtype)
    return batch.layout.to_grid(drops.T @ windows / windows.sum(0))


def cell_pixels(layout: TokenLayout, cell: int) -> tuple[int, int]:
    return cell * layout.patch_size[0], cell * layout.patch_size[1]


def rise_grids(count: int, layout: TokenLayout, cell: int, keep: float, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """RISE's random draws for ``count`` masks: binary grids (count, ⌈H/C_h⌉, ⌈W/C_w⌉) of cells kept with
    probability ``keep``, and shifts (count, 2) uniform in [0, C_h) × [0, C_w), C = ``cell`` patches in pixels."""
    if count < 1:
        raise VitxError(f"masks must be at least 1, got {count}")
    if cell < 1:
        raise VitxError(f"cell must be at least 1 patch, got {cell}")
    if not 0 < keep <= 1:
        raise VitxError(f"keep must be in (0, 1], got {keep}")
    size = cell_pixels(layout, cell)
    image = (layout.grid[0] * layout.patch_size[0], layout.grid[1] * layout.patch_size[1])
    cells = [math.ceil(n / c) for n, c in zip(image, size)]
    grids = (torch.rand(count, *cells, generator=generator) < keep).float()
    shifts = torch.stack([torch.randint(c, (count,), generator=generator) for c in size], 1)
    return grids, shifts


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, cell: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(k, H, W) masks: each grid (s_h, s_w) upsampled bilinearly to ((s_h+1)C_h, (s_w+1)C_w), then cropped to
    H×W at its shift, as in Petsiuk et al.'s code."""
    up = F.interpolate(grids[:, None], size=((grids.shape[1] + 1) * cell[0], (grids.shape[2] + 1) * cell[1]),
                       mode="bilinear", align_corners=False)[:, 0]
    rows = shifts[:, :1] + torch.arange(size[0], device=up.device)
    cols = shifts[:, 1:] + torch.arange(size[1], device=up.device)
    return up[torch.arange(len(up), device=up.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@register("rise", family="perturbation", paper=PETSIUK_2018, output="pixels", cost="masks×F + 1F",
          kinds=(*ANY_MODEL, "clip", "detr", "hvt"), requires=lambda config, params: one_score(config, params["score"]),
          memory=graphs(FORWARD, COPY))
def rise(batch: Batch, masks: int = 2000, cell: int = 2, keep: float = 0.5, baseline="zeros",
         score: str | None = None, seed: int = 0, internal_batch_size: int = 64) -> torch.Tensor:
    """RISE: S(λ) = 1/(N·p) Σ_k f_t(x' + M_k ⊙ (x − x')) M_k(λ) over N random masks M_k: grids of cells kept
    with probability p = ``keep``, upsampled bilinearly with a random shift of up to one cell (``cell``
    patches). x' = 0 in model input space multiplies the normalised image by the mask, as the authors' code.

    Paper defaults: 4000–8000 masks, 7×7 grids at 224 px, p = 0.5. Here ``cell`` = 2 patches is the paper's
    32-pixel cell on a 224-pixel ViT-B/16 and a 4×4 grid on a 64-pixel image, for which 2000 masks are the
    default: 125 masks per cell, between the paper's 82 and 163 per cell of a 7×7 grid. The masks come from
    ``seed``, the same for every image. ``score`` None: "probability", or on an image-text pair its one score, the
    similarity ("logit")."""
    score = score or ("logit" if batch.model.image_text else "probability")
    check_choice("score", score, SCORES)
    start = baseline_for(batch, baseline)
    grids, shifts = rise_grids(masks, batch.layout, cell, keep, torch.Generator().manual_seed(seed))
    x, size, pixels = batch.x, batch.x.shape[-2:], cell_pixels(batch.layout, cell)
    total = x.new_zeros(x.shape[0], *size)
    with torch.no_grad():
        targets = batch.targets
        per_pass = batch.copies_per_pass(internal_batch_size)
        for chunk, moves in zip(grids.to(x.device).split(per_pass), shifts.to(x.device).split(per_pass)):
            m = rise_masks(chunk, moves, pixels, size)
            logits, _ = batch.run(keep_pixels(start, x, m[:, None]).flatten(0, 1), attentions=False,
                                  tokens=False)
            scores = target_scores(logits, targets.repeat(len(m)), score).view(len(m), -1)
            total += torch.einsum("kb,khw->bhw", scores, m)
    return total / (masks * keep)


@register("kernel-shap", family="perturbation", paper=LUNDBERG_2017, cost="samples×F + 2F",
          kinds=(*ANY_MODEL, "clip", "detr", "hvt"), memory=graphs(FORWARD, COPY), requires=removal_fits)
def kernel_shap(batch: Batch, samples: int = 2048, removal: str = "baseline", baseline="zeros",
                score: str = "logit", seed: int = 0, internal_batch_size: int = 64) -> torch.Tensor:
    """KernelSHAP with the patches as players: φ = argmin Σ_k (v(S_k) − v(∅) − z_kᵀφ)² subject to
    Σ_i φ_i = v(N) − v(∅) (efficiency), over ``samples`` coalitions S_k (rounded up to pairs) drawn from the
    Shapley kernel π(S) = (P−1)/(C(P,|S|)|S|(P−|S|)) in complementary pairs, the constraint solved by
    eliminating one player (:func:`vitx.shapley.constrained_least_squares`). Players removed by the baseline or
    by attention masking (``removal``). The coalitions come from ``seed``, the same for every image."""
    coalitions = sample_coalitions(batch.layout.num_patches, samples, torch.Generator().manual_seed(seed))
    empty = coalitions.new_zeros(1, coalitions.shape[1])
    with torch.no_grad():
        values = coalition_values(batch, torch.cat([empty, coalitions]), removal, baseline, score,
                                  internal_batch_size)
        phi = constrained_least_squares(coalitions.to(values.device), values[1:], values[0],
                                        unmodified_scores(batch, score))
    return batch.layout.to_grid(phi)
