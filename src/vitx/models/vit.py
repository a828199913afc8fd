"""vitx's own Vision Transformer (Dosovitskiy et al., ICLR 2021), with timm's state_dict keys.

The module tree mirrors ``timm.models.vision_transformer.VisionTransformer`` (and DeiT's distilled
variant, Touvron et al. 2021), so a timm checkpoint loads here without timm installed:
``x0 = [cls, (dist), (reg...), E·patches] + pos``; ``x_{l+1} = x_l + MHSA(LN(x_l))``, then
``x_{l+1} += MLP(LN(x_{l+1}))``; logits = head(LN(x_L)[cls]) (or the mean of the patch tokens).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    in_chans: int = 3
    qkv_bias: bool = True
    class_token: bool = True
    distilled: bool = False          # DeiT: a second prefix token with its own head
    reg_tokens: int = 0              # register tokens (Darcet et al. 2024)
    no_embed_class: bool = False     # position embeddings cover the patches only
    global_pool: str = "token"       # "token" (class token) or "avg" (mean of patch tokens)
    init_values: float | None = None  # LayerScale
    stem: str = "patch"              # "patch": one linear patch projection (timm); "conv": early convolutions

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEmbed(nn.Module):
    """Patch tokens (B, D, gh, gw). ``stem="patch"``: one linear projection of each p×p patch (timm's).
    ``stem="conv"``: log2(p) stride-2 3×3 conv-BN-ReLU stages, then a 1×1 projection (Xiao et al.,
    NeurIPS 2021, Early Convolutions Help Transformers See Better): the same token grid, a locality
    prior that makes small ViTs train several times faster from scratch."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.stem == "patch":
            self.stem = nn.Identity()
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
            return
        stages = cfg.patch_size.bit_length() - 1
        if cfg.stem != "conv" or 2 ** stages != cfg.patch_size:
            raise ValueError(f"stem must be 'patch', or 'conv' with a power-of-two patch size; got {cfg.stem!r}, "
                             f"patch {cfg.patch_size}")
        layers, channels = [], cfg.in_chans
        for i in range(stages):
            width = cfg.embed_dim // 2 ** (stages - 1 - i)
            layers += [nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, cfg.embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, head_dim)."""
        B, N, _ = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, head_dim) -> projected (B, N, D)."""
        B, _, N, _ = context.shape
        return self.proj(context.transpose(1, 2).reshape(B, N, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge_heads(F.scaled_dot_product_attention(*self.split_heads(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.ls2 = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        dim, grid = cfg.embed_dim, cfg.image_size // cfg.patch_size
        self.grid_size = (grid, grid)
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, dim)) if cfg.reg_tokens else None
        embed_len = grid * grid + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.randn(1, embed_len, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        use_fc_norm = cfg.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(dim, cfg.num_classes)
        self.head_dist = nn.Linear(dim, cfg.num_classes) if cfg.distilled else None
        self.apply(_init_weights)
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6 if token is not self.reg_token else 0.02)

    def _positions(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Split the position embedding into its prefix part and the patch part resampled to ``grid``."""
        n_prefix = 0 if self.cfg.no_embed_class else self.num_prefix_tokens
        prefix, patches = self.pos_embed[:, :n_prefix], self.pos_embed[:, n_prefix:]
        if grid != self.grid_size:
            D = patches.shape[-1]
            patches = patches.reshape(1, *self.grid_size, D).permute(0, 3, 1, 2)
            patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False, antialias=True)  # as timm
            patches = patches.permute(0, 2, 3, 1).reshape(1, -1, D)
        return (prefix if n_prefix else None), patches

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens entering the first block, (B, prefix + patches, D): prefix tokens and patch embeddings, with
        their positions."""
        return self.place(*self.patch_tokens(x))

    def patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The patch embeddings (B, patches, D) before positions, and their grid."""
        x = self.patch_embed(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])

    def place(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch embeddings ``x`` (B, patches, D) on ``grid`` -> the tokens entering the first block: the prefix
        tokens put first and the position embeddings added."""
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        pos_prefix, pos_patches = self._positions(grid)
        if pos_prefix is None:
            return torch.cat(prefix + [x + pos_patches], dim=1)
        return torch.cat(prefix + [x], dim=1) + torch.cat([pos_prefix, pos_patches], dim=1)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.global_pool == "avg":
            return self.head(self.fc_norm(x[:, self.num_prefix_tokens:].mean(1)))
        if self.head_dist is not None:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
