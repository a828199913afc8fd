"""Adapter for vitx's HVT (:mod:`vitx.models.hvt`): a flat token sequence that shrinks between stages by 1-D max
pooling. Its blocks are vitx ViT blocks ("image" self-attention sites, in forward order); the tap records each block's
tokens at its own length (64 patches, then the pooled lengths), and ``Description.levels`` says how many blocks each
stage has. Only the first stage's tokens are the patch grid."""
from __future__ import annotations

from torch import nn

from .base import Description, pair
from .vitx import VitxViTAdapter


class HVTAdapter(VitxViTAdapter):

    def describe(self) -> Description:
        cfg = self.net.cfg
        return Description(pair(cfg.image_size), pair(cfg.patch_size), 0, None, cfg.num_classes, dynamic_size=False,
                           kind="hvt", levels=tuple(cfg.depths), pooling="avg")

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)
