"""HVT (Pan et al., ICCV 2021, Scalable Vision Transformers with Hierarchical Pooling): a ViT whose token sequence
shrinks between stages by 1-D max pooling, so that deeper blocks hold fewer tokens.

``x_0 = E·patches + P_0`` (no class token); stage s runs its blocks (vitx's ViT blocks) on ``x``; between stages
``x <- MaxPool1d(x) + P_s`` over the token axis, per channel (kernel 3, stride 2, no padding: the authors' code;
a sequence of n tokens becomes ⌊(n − 3) / 2⌋ + 1, so 64 -> 31 -> 15 and the last token of an even sequence is in no
window); every stage has its own learned position embedding ``P_s`` (the authors' code adds one after each pooling);
logits = head(mean_n LN(x_L)) (no class token: average pooling, as the paper). The patch embedding is vitx's
(:class:`vitx.models.vit.PatchEmbed`, a convolutional stem by default).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .vit import Block, PatchEmbed, _init_weights


@dataclass(frozen=True)
class HVTConfig:
    image_size: int = 64
    patch_size: int = 8
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 2)   # blocks per stage; a pooling between consecutive stages
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 8
    in_chans: int = 3
    qkv_bias: bool = True
    stem: str = "conv"
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_padding: int = 0
    init_values: float | None = None      # LayerScale (read by the shared ViT block)

    @property
    def depth(self) -> int:
        return sum(self.depths)

    def lengths(self) -> list[int]:
        """Tokens per stage: the patches, then each pooling's output length."""
        n = [(self.image_size // self.patch_size) ** 2]
        for _ in self.depths[1:]:
            n.append((n[-1] + 2 * self.pool_padding - self.pool_kernel) // self.pool_stride + 1)
        return n

    def to_dict(self) -> dict:
        return asdict(self)


class HVT(nn.Module):
    def __init__(self, cfg: HVTConfig):
        super().__init__()
        lengths = cfg.lengths()
        if cfg.image_size % cfg.patch_size or not cfg.depths or min(cfg.depths) < 1 or min(lengths) < 1:
            raise ValueError(f"HVT needs image_size a multiple of patch_size, stages of >= 1 block and >= 1 token "
                             f"after every pooling; got {cfg}")
        self.cfg = cfg
        grid = cfg.image_size // cfg.patch_size
        self.grid_size = (grid, grid)
        self.num_prefix_tokens = 0
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.randn(1, lengths[0], cfg.embed_dim) * 0.02)
        self.stage_pos_embed = nn.ParameterList(nn.Parameter(torch.randn(1, n, cfg.embed_dim) * 0.02)
                                                for n in lengths[1:])
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.apply(_init_weights)

    def stages(self) -> list[list[nn.Module]]:
        """The blocks of each stage."""
        found, start = [], 0
        for depth in self.cfg.depths:
            found.append(list(self.blocks[start:start + depth]))
            start += depth
        return found

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D max pooling over the tokens of ``x`` (B, N, D), per channel: the pooled tokens (B, N', D) and, per
        output token and channel, the index of the input token that won (B, N', D)."""
        cfg = self.cfg
        pooled, won = F.max_pool1d(x.transpose(1, 2), cfg.pool_kernel, cfg.pool_stride, cfg.pool_padding,
                                   return_indices=True)
        return pooled.transpose(1, 2), won.transpose(1, 2)

    def forward_features(self, x: torch.Tensor, winners: list | None = None) -> torch.Tensor:
        """The last stage's tokens after the final norm, (B, N_last, D). ``winners``, a list, receives each pooling's
        winning indices (:meth:`pool`)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for s, blocks in enumerate(self.stages()):
            if s:
                x, won = self.pool(x)
                x = x + self.stage_pos_embed[s - 1]
                if winners is not None:
                    winners.append(won)
            for block in blocks:
                x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
