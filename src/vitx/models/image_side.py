"""The image side that vitx's multi-part models share with ``vitx_shapes`` (:mod:`vitx.models.vit`): a 64x64 image in
8x8 patches embedded by a convolutional stem, 96-dimensional tokens, 4 heads; so each can start from a shapes ViT."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ImageSide:
    image_size: int = 64
    patch_size: int = 8
    embed_dim: int = 96
    num_heads: int = 4
    mlp_ratio: float = 4.0
    stem: str = "conv"
    in_chans: int = 3
    qkv_bias: bool = True

    def to_dict(self) -> dict:
        return asdict(self)
