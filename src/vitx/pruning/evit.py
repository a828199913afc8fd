"""EViT (Liang et al., ICLR 2022, Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations), on a vitx ViT.

In each reorganisation block, after the attention half, the class token's attention to the other tokens,
a_i = mean_h A^h_{cls,i} (over the tokens after the prefix), ranks them: the k = ⌈ρ (N − 1)⌉ most attended stay
(N − 1 counting every token but the class token, a fused token of an earlier stage included, as the authors' code
does), and the rest, the inattentive set 𝒩, are fused into one token x_fused = Σ_{i∈𝒩} a_i x_i (Eq. 3): weighted
by their own class attention, not renormalised, so the weights sum to the class token's attention mass on 𝒩.
The MLP half then runs on the shorter sequence [x_cls, kept, x_fused].
Fine-tuning follows the paper's schedule: the keep rate starts at 1 and falls to ρ along a cosine
(:func:`keep_rate_schedule`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import attention_step, gather, mlp_step
from .stages import Stage


def reorganise(tokens: torch.Tensor, probs: torch.Tensor, ratio: float, prefix: int, fuse: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EViT's token reorganisation of ``tokens`` (B, N, D) after an attention with probabilities ``probs``
    (B, heads, N, N), the class token first. Returns the new tokens, the positions kept among the non-prefix
    tokens (B, k), their class attention a (B, N − prefix), and the fusion weights (B, N − prefix − k)."""
    attention = probs[:, :, 0, prefix:].mean(1)
    rest = tokens[:, prefix:]
    k = math.ceil(ratio * rest.shape[1])
    order = attention.argsort(1, descending=True)
    top, inattentive = order[:, :k], order[:, k:]
    weights = gather(attention, inattentive)
    parts = [tokens[:, :prefix], gather(rest, top)]
    if fuse and inattentive.shape[1]:
        parts.append((gather(rest, inattentive) * weights[..., None]).sum(1, keepdim=True))
    return torch.cat(parts, 1), top, attention, weights


class EViT(nn.Module):
    """A vitx ``VisionTransformer`` (``vit``, its weights unchanged) that reorganises its tokens inside the blocks of
    ``stages`` at keep rate ``ratio``; with ``fuse`` the inattentive tokens become one fused token."""

    def __init__(self, vit: nn.Module, stages: tuple[int, ...], ratio: float, fuse: bool = True):
        super().__init__()
        self.vit, self.stages, self.ratio, self.fuse = vit, tuple(stages), ratio, fuse

    def forward(self, x: torch.Tensor, ratio: float | None = None) -> tuple[torch.Tensor, list[Stage]]:
        """(logits, per-stage :class:`~vitx.pruning.stages.Stage`) at keep rate ``ratio`` (default: the model's)."""
        ratio = self.ratio if ratio is None else ratio
        vit, prefix = self.vit, self.vit.num_prefix_tokens
        tokens = vit.embed(x)
        B, P = tokens.shape[0], tokens.shape[1] - prefix
        index = torch.arange(P, device=x.device).expand(B, P)      # P stands for the fused token
        stages = []
        for i, block in enumerate(vit.blocks):
            if i not in self.stages or ratio == 1:
                tokens = block(tokens)
                continue
            tokens, probs = attention_step(block, tokens)
            tokens, top, attention, _ = reorganise(tokens, probs, ratio, prefix, self.fuse)
            stages.append(Stage(i, index, attention, gather(index, top)))
            index = gather(index, top)
            if tokens.shape[1] > prefix + top.shape[1]:
                index = torch.cat([index, index.new_full((B, 1), P)], 1)
            tokens = mlp_step(block, tokens)
        return vit.forward_head(vit.norm(tokens)), stages


def keep_rate_schedule(step: int, steps: int, ratio: float, warmup: float = 0.1, shrink: float = 0.5) -> float:
    """EViT's keep rate while fine-tuning: 1 for the first ``warmup`` share of the steps, then down to ``ratio``
    along a half cosine over the next ``shrink`` share, then ``ratio``."""
    start, length = warmup * steps, max(1.0, shrink * steps)
    progress = min(1.0, max(0.0, (step - start) / length))
    return ratio + (1 - ratio) * (1 + math.cos(math.pi * progress)) / 2
