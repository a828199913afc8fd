"""R-Cut (Niu et al., Sensors 2024; arXiv 2307.09050): a training-free, target-dependent map from the patch tokens of
a ViT, in two modules, as the authors' code (oniu-uin0/R-Cut, ``pytorch_grad_cam/score_cam.py`` and ``base_cam.py``)
computes them.

Relationship Weighted Out: the features F (N patches, D channels) are the output of the ``norm1`` LayerNorm of a
block (the authors': the last); each channel's map over the patch grid, min-max scaled and upsampled to the image,
is a mask M_k that multiplies the (normalised) input; the model's softmax probability of the target on the masked
input scores it, s_k = p_t(x ⊙ M_k); a softmax over the channels turns the scores into weights, w = softmax(s), and
the weighted features are F'[:, k] = w_k F[:, k].

Cut: the normalised cut of Shi & Malik (TPAMI 2000) on a graph of the patches, as TokenCut (Wang et al., CVPR 2022)
builds it: W_ij = 1 where the cosine similarity of F'_i and F'_j exceeds τ, else 1e-5; D = diag(W 1); the
second-smallest generalised eigenvector y of (D − W) y = λ D y splits the patches at its mean into object and
background, the object being the side that holds the largest |y_i|, y signed so that this side lies above the
mean. The map is max(y, 0) on the patch grid. That rule picks the most distinct cluster of patches whatever the
target; ``side="relevance"`` (ours, not the authors') picks instead the side where the weighted features' channel sum
is higher, so that the target also decides which object the cut keeps (docs/inherent.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh

from ..perturbation import SCORES, check_choice, one_score, target_scores
from ...batch import Batch
from ...errors import VitxError
from ...memory import COPY, FORWARD, graphs
from ...registry import register
from ...scaling import minmax

NIU_2024 = ("Niu, Ding, Ge, Karlsson, Zhang & Takeda, Sensors 2024 (arXiv 2307.09050), R-Cut: Enhancing "
            "Explainability in Vision Transformers with Relationship Weighted Out and Cut")
SIDES = ("largest", "relevance")   # which side of the cut is the object: the authors' rule, or ours
NO_EDGE = 1e-5   # the authors' (TokenCut's) weight between patches less similar than τ: the graph stays connected


def block_index(model, params: dict) -> int:
    """``fits``: the index of the block whose ``norm1`` output R-Cut reads, once that block is known to exist, and
    that its adapter names the LayerNorm opening the block's attention branch."""
    block, depth = params["block"], len(model.adapter.blocks())
    if not -depth <= block < depth:
        raise VitxError(f"r-cut reads the norm1 output of block {block}; this model has {depth} blocks "
                        f"(0..{depth - 1} or -{depth}..-1)")
    try:
        model.adapter.residual_branches(model.adapter.blocks()[block])
    except (NotImplementedError, VitxError):
        raise VitxError(f"r-cut reads the LayerNorm that opens a block's attention branch, and vitx's adapter for "
                        f"{type(model.net).__name__} does not name it") from None
    return block % depth


def _requires(config, params: dict) -> None:
    check_choice("score", params["score"], SCORES)
    check_choice("side", params["side"], SIDES)
    one_score(config, params["score"])


def token_features(batch: Batch, block: int) -> torch.Tensor:
    """(B, D, gh, gw): the output of block ``block``'s norm1 at the patch tokens, channels first, from one forward
    of the batch's own images (which also fixes the default targets)."""
    _, tr = batch.run(attentions=False, tokens=False, inputs=True)
    norm = batch.model.adapter.residual_branches(batch.model.adapter.blocks()[block])[0]
    patches = norm(tr.inputs[block])[:, batch.layout.patches]
    return batch.layout.to_grid(patches.transpose(1, 2))


def channel_masks(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(R, H, W) masks from channel maps (R, gh, gw): each min-max scaled to [0, 1] and upsampled bilinearly with
    aligned corners (the authors' ``UpsamplingBilinear2d``, whose values keep the grid's extremes, so scaling before
    upsampling is the authors' scaling after it). A constant channel gives a mask of zeros."""
    return F.interpolate(minmax(features)[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def channel_scores(batch: Batch, features: torch.Tensor, score: str, internal_batch_size: int) -> torch.Tensor:
    """(B, D) s_bk = f_t(x_b ⊙ M_bk): every channel mask of every image in ``internal_batch_size``-row forwards,
    the masks built chunk by chunk (``score``: "probability", softmax(y)_t as the authors, or "logit", y_t)."""
    x, targets = batch.x, batch.targets
    B, D = features.shape[:2]
    maps, size = features.flatten(0, 1), tuple(x.shape[-2:])
    scores = []
    for rows in torch.arange(B * D, device=x.device).split(internal_batch_size):
        image = rows // D
        masked = x[image] * channel_masks(maps[rows], size)[:, None]
        logits, _ = batch.run(masked, attentions=False, tokens=False)
        scores.append(target_scores(logits, targets[image], score))
    return torch.cat(scores).view(B, D)


def normalized_cut(features: np.ndarray, tau: float, relevance: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """The normalised cut of the patches' features (N, D), float64: W_ij = 1 where cos(f_i, f_j) > τ else 1e-5,
    D = diag(W 1), y the eigenvector of the second-smallest λ of (D − W) y = λ D y (scipy.linalg.eigh on the dense
    pair, D-normalised: yᵀ D y = 1). The patches split at the mean of y; the object is the side that holds the
    largest |y_i| (the authors' rule), or with ``relevance`` (N,) the side of the higher mean relevance. Returns
    (y signed so that the object side lies above the mean, the object side (N,) bool, λ)."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    weights = np.where(unit @ unit.T > tau, 1.0, NO_EDGE)
    degree = np.diag(weights.sum(1))
    values, vectors = eigh(degree - weights, degree, subset_by_index=[1, 1])
    y = vectors[:, 0]
    side = y > y.mean()
    if not (side[np.abs(y).argmax()] if relevance is None else relevance[side].mean() > relevance[~side].mean()):
        y, side = -y, ~side
    return y, side, float(values[0])


@register("r-cut", family="inherent", paper=NIU_2024,
          cost="(1+D)F, D the features' channels (the embedding width), and one generalised eigenproblem of N "
               "patches", memory=graphs(FORWARD, COPY), requires=_requires, fits=block_index, ranges={"tau": "[-1, 1)"})
def r_cut(batch: Batch, block: int = -1, tau: float = 0.2, score: str = "probability", side: str = "largest",
          internal_batch_size: int = 64) -> torch.Tensor:
    """R-Cut: max(y, 0) on the patch grid, y the normalised cut's eigenvector on the features of block ``block``'s
    norm1 (default: the last, as the authors) weighted by softmax over channels of s_k = f_t(x ⊙ M_k), M_k channel
    k's min-max scaled map upsampled to the image (Relationship Weighted Out), with edges where the cosine
    similarity exceeds ``tau`` (the authors' 0.2). ``score``: the authors' softmax probability of the target, or the
    logit. ``side``: which side of the cut is the object, "largest" the side of the largest |y_i| (the authors'),
    "relevance" (ours) the side where the weighted channels' sum Σ_k w_k F[:, k] is higher on average, which keeps
    the target's say in the choice. ``exp.details["object"]``: each image's object side (gh, gw) bool;
    ``["eigenvalue"]``: λ."""
    index = block_index(batch.model, {"block": block})
    with torch.no_grad():
        features = token_features(batch, index)                                # (B, D, gh, gw)
        weights = channel_scores(batch, features, score, internal_batch_size).softmax(1)
        weighted = (weights[:, :, None, None] * features).flatten(2).transpose(1, 2).double().cpu().numpy()
    maps, sides = [], []
    for tokens in weighted:                                                    # (N, D) per image
        y, chosen, value = normalized_cut(tokens, tau, tokens.sum(1) if side == "relevance" else None)
        maps.append(np.maximum(y, 0))
        sides.append(torch.from_numpy(chosen).view(batch.layout.grid))
        batch.details.setdefault("eigenvalue", []).append(value)
    batch.details.setdefault("object", []).extend(sides)
    return batch.layout.to_grid(torch.from_numpy(np.stack(maps)).to(device=batch.x.device, dtype=batch.x.dtype))
