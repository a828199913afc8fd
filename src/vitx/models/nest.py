"""NesT, the nested hierarchical transformer (Zhang et al., AAAI 2022, Nested Hierarchical Transformer: Towards
Accurate, Data-Efficient and Interpretable Visual Understanding), with timm's state_dict keys.

The image is cut into p×p patches, embedded, and the patch grid into 4^(L−1) non-overlapping square blocks
of b×b patches. Level l runs transformer layers inside each block only (attention never crosses a block),
with one position embedding per block position; then block aggregation (3×3 convolution, LayerNorm over
channels, 3×3 max-pool with stride 2) halves the grid, so 4 blocks of level l become 1 of level l+1. The
last level is one block; logits = head(mean over positions of LN(features)). Each node of the resulting
tree sees only its own image region.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import vit
from .vit import Mlp, _init_weights


@dataclass(frozen=True)
class NestConfig:
    image_size: int = 224
    patch_size: int = 4
    num_levels: int = 3
    embed_dims: tuple[int, ...] = (96, 192, 384)
    num_heads: tuple[int, ...] = (3, 6, 12)
    depths: tuple[int, ...] = (2, 2, 8)
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    in_chans: int = 3

    def __post_init__(self):
        for name in ("embed_dims", "num_heads", "depths"):
            if len(getattr(self, name)) != self.num_levels:
                raise ValueError(f"{name} needs one entry per level ({self.num_levels}), got {getattr(self, name)}")
        grid, blocks = self.image_size // self.patch_size, 2 ** (self.num_levels - 1)
        if self.image_size % self.patch_size or grid % blocks:
            raise ValueError(f"a {self.image_size}px image in {self.patch_size}px patches does not split into "
                             f"{blocks}x{blocks} blocks")

    @property
    def grid(self) -> int:
        """Patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def block_size(self) -> int:
        """Positions along each side of a block, at every level."""
        return self.grid // 2 ** (self.num_levels - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def blockify(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, T, N, C): T = (H/b)(W/b) blocks in row-major order, N = b² positions each."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // block, block, W // block, block, C).transpose(2, 3)
    return x.reshape(B, (H // block) * (W // block), block * block, C)


def deblockify(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, T, N, C) -> (B, H, W, C), the inverse of :func:`blockify` for a square grid of blocks."""
    B, T, _, C = x.shape
    side = round(T ** 0.5)
    x = x.reshape(B, side, side, block, block, C).transpose(2, 3)
    return x.reshape(B, side * block, side * block, C)


class Attention(vit.Attention):
    """Multi-head self-attention within each block: x (B, T, N, C), attention (B, heads, T, N, N)."""

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, N, C) -> q, k, v each (B, heads, T, N, head_dim)."""
        B, T, N, _ = x.shape
        return self.qkv(x).reshape(B, T, N, 3, self.num_heads, self.head_dim).permute(3, 0, 4, 1, 2, 5).unbind(0)

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, N, head_dim) -> projected (B, T, N, C). As in the reference JAX code (and timm), the
        heads are interleaved: channel c·heads + h holds head h's channel c."""
        B, _, T, N, _ = context.shape
        return self.proj(context.permute(0, 2, 3, 4, 1).reshape(B, T, N, -1))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvPool(nn.Module):
    """Block aggregation: 3×3 convolution, LayerNorm over channels, 3×3 max-pool with stride 2 (B, C, H, W)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.norm = nn.LayerNorm(dim_out, eps=1e-6)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.pool(x)


class NestLevel(nn.Module):
    """One level: aggregate the previous level's map (none at level 0), blockify, add the per-block position
    embeddings, run the transformer layers inside the blocks, and return the map (B, C, H, W)."""

    def __init__(self, cfg: NestConfig, level: int):
        super().__init__()
        dim = cfg.embed_dims[level]
        self.block_size = cfg.block_size
        blocks = 4 ** (cfg.num_levels - 1 - level)
        self.pos_embed = nn.Parameter(torch.zeros(1, blocks, cfg.block_size ** 2, dim))
        self.pool = ConvPool(cfg.embed_dims[level - 1], dim) if level else nn.Identity()
        self.transformer_encoder = nn.Sequential(*[TransformerLayer(dim, cfg.num_heads[level], cfg.mlp_ratio,
                                                                    cfg.qkv_bias) for _ in range(cfg.depths[level])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = blockify(self.pool(x).permute(0, 2, 3, 1), self.block_size) + self.pos_embed
        return deblockify(self.transformer_encoder(x), self.block_size).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: NestConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dims[0], cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Nest(nn.Module):
    def __init__(self, cfg: NestConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.levels = nn.Sequential(*[NestLevel(cfg, level) for level in range(cfg.num_levels)])
        self.norm = nn.LayerNorm(cfg.embed_dims[-1], eps=1e-6)
        self.head = nn.Linear(cfg.embed_dims[-1], cfg.num_classes)
        self.apply(_init_weights)
        for level in self.levels:
            nn.init.trunc_normal_(level.pos_embed, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The top-level map after the final LayerNorm, (B, C, H_L, W_L)."""
        x = self.levels(self.patch_embed(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


__all__ = ["Nest", "NestConfig", "blockify", "deblockify"]
