"""Adapter for vitx's own architectures (:mod:`vitx.models`)."""
from __future__ import annotations

from functools import partial

from torch import nn

from ..models.vit import VisionTransformer
from .base import Adapter, Attend, Description, pair, project_values


class VitxViTAdapter(Adapter):
    framework = "vitx"

    def describe(self) -> Description:
        net: VisionTransformer = self.net
        cfg = net.cfg
        return Description(pair(cfg.image_size), pair(cfg.patch_size), cfg.num_prefix_tokens,
                           0 if cfg.class_token else None, cfg.num_classes, dynamic_size=True,
                           pooling="cls" if cfg.global_pool == "token" else cfg.global_pool)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def attentions(self) -> list[nn.Module]:
        return [block.attn for block in self.net.blocks]

    def attention_forward(self, module, attend: Attend):
        def forward(x):
            q, k, v = module.split_heads(x)
            return module.merge_heads(attend(q, k, v, module.scale))
        return forward

    def value_projection(self, module):
        return partial(project_values, module.proj)

    def pixel_layer(self) -> nn.Module:
        stem = self.net.patch_embed.stem
        return stem[0] if isinstance(stem, nn.Sequential) else self.net.patch_embed.proj

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        return block.norm1, block.norm2

