"""Perturbation methods: how the prediction changes when part of the input is taken away.

Notation: y the logits, t the target class, CE(y, t) = −log softmax(y)_t, P the number of patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch import Batch
from ..errors import VitxError
from ..layout import TokenLayout
from ..registry import register

DEISEROTH_2023 = ("Deiseroth et al., NeurIPS 2023, AtMan: Understanding Transformer Predictions Through Memory "
                  "Efficient Attention Manipulation")


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


@register("atman", family="perturbation", paper=DEISEROTH_2023, needs={"attention"}, cost="(1+P)F")
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
