"""Attention-based methods: what the attention maps themselves (and their gradients) say.

Every function takes a :class:`~vitx.batch.Batch` and returns the class token's relevance for each
patch, (B, gh, gw). Notation: A_b is block b's attention (B, heads, N, N), ∇A_b = ∂y_t/∂A_b for the
target logit y_t, E_h the mean over heads, row c the class token.
"""
from __future__ import annotations

import torch

from ..batch import Batch
from ..errors import VitxError
from ..registry import register

CHEFER_2021 = "Chefer, Gur & Wolf, ICCV 2021, Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
ABNAR_2020 = "Abnar & Zuidema, ACL 2020, Quantifying Attention Flow in Transformers"


def cls_row(batch: Batch, matrix: torch.Tensor) -> torch.Tensor:
    """Row of the class token over the patch columns of a (B, N, N) matrix -> (B, gh, gw)."""
    layout = batch.layout
    return layout.to_grid(matrix[:, layout.cls_index, layout.patches])


@register("raw-attention", family="attention", paper="Vaswani et al., NeurIPS 2017 (attention weights as explanation)",
          needs={"attention", "cls_token"}, cost="1F")
def raw_attention(batch: Batch, block: int = -1) -> torch.Tensor:
    """The class token's attention to each patch in one block (default the last), heads averaged:
    R = E_h A_b[c, patches]."""
    with torch.no_grad():
        _, tr = batch.run(attentions=[block], tokens=False)
    return cls_row(batch, tr.attentions[0].mean(1))


def fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise VitxError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


def discard_lowest(attention: torch.Tensor, ratio: float, keep: int) -> torch.Tensor:
    """Zero the smallest ``ratio`` of each image's (N, N) entries (and any tied with the last of them),
    never the class token's self-attention."""
    if not 0 <= ratio < 1:
        raise VitxError(f"discard_ratio must be in [0, 1), got {ratio}")
    count = int(attention[0].numel() * ratio)
    if count == 0:
        return attention
    flat = attention.flatten(1)
    ranked = flat.clone()
    ranked[:, keep * attention.shape[-1] + keep] = float("inf")
    cut = ranked.kthvalue(count, dim=1, keepdim=True).values  # a selection, several times cheaper than topk
    return flat.masked_fill(ranked <= cut, 0.0).view_as(attention)


def rollout_matrix(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
                   start_layer: int = 0, keep: int = 0) -> torch.Tensor:
    """R = Â_L ⋯ Â_s with Â_b = norm_rows(fuse_h(A_b) + I): attention rollout over blocks s..L."""
    if not 0 <= start_layer < len(attentions):
        raise VitxError(f"start_layer must be in [0, {len(attentions) - 1}], got {start_layer}")
    result = None
    for attention in attentions[start_layer:]:
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio, keep)
        mixed = fused + torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    return result


@register("rollout", family="attention", paper=ABNAR_2020, needs={"attention", "cls_token"}, cost="1F")
def rollout(batch: Batch, head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0) -> torch.Tensor:
    """Attention rollout: the class token's row of R = Â_L ⋯ Â_s, Â_b = norm_rows(fuse_h(A_b) + I),
    heads fused by mean, max or min, the lowest ``discard_ratio`` of each Â_b's entries dropped."""
    with torch.no_grad():
        _, tr = batch.run(tokens=False)
    return cls_row(batch, rollout_matrix(tr.attentions, head_fusion, discard_ratio, start_layer,
                                          keep=batch.layout.cls_index))


def generic_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """R = I; for each block b: R += E_h[(∇A_b ⊙ A_b)⁺] R   (Chefer et al. 2021, eq. 5-6)."""
    B, _, N, _ = attentions[0].shape
    relevance = torch.eye(N, device=attentions[0].device, dtype=attentions[0].dtype).expand(B, N, N)
    for attention, gradient in zip(attentions, gradients):
        weighted = (gradient * attention).clamp(min=0).mean(1)
        relevance = relevance + weighted @ relevance
    return relevance


@register("generic-attention", family="attention", paper=CHEFER_2021, needs={"attention", "gradients", "cls_token"},
          cost="1F+1B")
def generic_attention(batch: Batch) -> torch.Tensor:
    """Chefer et al.'s self-attention rule: R = I, R += E_h[(∇A_b ⊙ A_b)⁺] R over the blocks;
    the class token's row of R."""
    logits, tr = batch.run(tokens=False)
    gradients = tr.gradients(batch.score(logits))
    return cls_row(batch, generic_relevance([a.detach() for a in tr.attentions], gradients))


@register("attention-gradcam", family="attention", paper="Selvaraju et al., ICCV 2017 (Grad-CAM), on attention as in Chefer et al. 2021",
          needs={"attention", "gradients", "cls_token"}, cost="1F+1B")
def attention_gradcam(batch: Batch, block: int = -1) -> torch.Tensor:
    """Grad-CAM on one block's attention: R = ReLU(E_h[w_h A_b[h, c, patches]]), where w_h is the mean
    over patches of ∇A_b[h, c, patches]."""
    logits, tr = batch.run(attentions=[block], tokens=False)
    attention, = tr.attentions
    gradient, = torch.autograd.grad(batch.score(logits), attention)
    patches, c = batch.layout.patches, batch.layout.cls_index
    cam, grad = attention.detach()[:, :, c, patches], gradient[:, :, c, patches]
    weights = grad.mean(-1, keepdim=True)
    return batch.layout.to_grid((weights * cam).mean(1).clamp(min=0))
