"""The amortised ViT Shapley explainer (Covert, Kim & Lee, ICLR 2023, Learning to Estimate Shapley Values
with Vision Transformers, Sec. 4): a ViT backbone, extra attention blocks and an MLP head that give every
patch token a value per class in one forward pass.

φ_raw(x) = MLP(LN(Blocks(ViT(x))))[patches] ∈ R^{P×C}; the additive efficient normalisation
(:func:`vitx.shapley.efficient_normalization`) then makes Σ_i φ_i(x, y) = v_y(N) − v_y(∅) for every class.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .vit import Block, ViTConfig, VisionTransformer


class ShapleyExplainer(nn.Module):
    """``backbone``: the explained classifier's architecture (its head unused), started from the surrogate's
    weights; ``blocks``: ``extra_blocks`` further transformer blocks; ``head``: ``mlp_layers`` linear layers
    of width ``mlp_ratio``·D with GELU between them, applied to each patch token, C outputs each."""

    def __init__(self, cfg: ViTConfig, extra_blocks: int = 1, mlp_layers: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        self.backbone = VisionTransformer(replace(cfg, num_classes=1))
        self.backbone.head = nn.Identity()
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(extra_blocks)])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        widths = [cfg.embed_dim] + [int(cfg.embed_dim * mlp_ratio)] * (mlp_layers - 1) + [cfg.num_classes]
        layers: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
            layers += ([nn.GELU()] if i else []) + [nn.Linear(width_in, width_out)]
        self.head = nn.Sequential(*layers)
        nn.init.zeros_(self.head[-1].weight)  # start from φ_raw = 0: normalised, the even split of v(N) − v(∅)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) model input -> φ_raw (B, P, C), before the efficient normalisation."""
        tokens = self.norm(self.blocks(self.backbone.forward_features(x)))
        return self.head(tokens[:, self.backbone.num_prefix_tokens:])


__all__ = ["ShapleyExplainer"]
