"""Adapter for NesT (Zhang et al., AAAI 2022): vitx's own (:mod:`vitx.models.nest`) and timm's, which share one
module tree. Attention runs inside each image block: q, k, v are (B, heads, T, N, head_dim) for T blocks of N
positions, and the tap records attention as (B, heads, T, N, N). The tap's blocks are the transformer layers of
all levels in order; ``Description.levels`` says how many belong to each level.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, Attend, Description, pair
from .timm import recorded_preprocessing


class NestAdapter(Adapter):
    def __init__(self, net: nn.Module, framework: str):
        super().__init__(net)
        self.framework = framework

    def describe(self) -> Description:
        net = self.net
        patch = net.patch_embed.proj.kernel_size[0]
        levels = tuple(len(level.transformer_encoder) for level in net.levels)
        _, blocks, positions, _ = net.levels[0].pos_embed.shape                 # level 0: T blocks of N patches
        side = round((blocks * positions) ** 0.5) * patch
        classes = int(net.head.out_features)
        return Description(pair(side), pair(patch), 0, None, classes, dynamic_size=False, kind="nest",
                           levels=levels, pooling="avg",
                           **recorded_preprocessing(net, classes))  # timm's NesT

    def blocks(self) -> list[nn.Module]:
        return [layer for level in self.net.levels for layer in level.transformer_encoder]

    def attentions(self) -> list[nn.Module]:
        return [layer.attn for layer in self.blocks()]

    def attention_forward(self, module, attend: Attend):
        def forward(x: torch.Tensor) -> torch.Tensor:
            B, T, N, C = x.shape
            heads = module.num_heads
            q, k, v = module.qkv(x).reshape(B, T, N, 3, heads, C // heads).permute(3, 0, 4, 1, 2, 5).unbind(0)
            context = attend(q, k, v, module.scale)                       # (B, heads, T, N, head_dim)
            out = module.proj(context.permute(0, 2, 3, 4, 1).reshape(B, T, N, C))
            return module.proj_drop(out) if hasattr(module, "proj_drop") else out
        return forward

    def position_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits per position of the top level from its last layer's tokens (B, 1, N, C): head(LN(t_n)),
        (B, N, classes), row-major over the top map. Their mean over positions is the model's logits (the
        head is a mean followed by a linear layer)."""
        return self.net.head(self.net.norm(tokens[:, 0]))

    def pixel_layer(self) -> nn.Module:
        return self.net.patch_embed.proj

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        return block.norm1, block.norm2
