"""vitx's DETR-like detector (Carion et al., ECCV 2020, End-to-End Object Detection with Transformers), small
enough to train on a CPU.

- Encoder: ViT patch tokens (:class:`vitx.models.vit.PatchEmbed`, so it can start from a ``vitx_shapes``
  classifier) plus learned position embeddings, then ``encoder_layers`` pre-norm self-attention blocks:
  the image stream i.
- Decoder: ``queries`` learned object queries q_0 = Q, then per layer (pre-norm) q += SelfAttn(LN(q)),
  q += CrossAttn(LN(q), LN(i)), q += MLP(LN(q)): the queries attend to each other, then to the image tokens.
- Heads, per query, read LN(q_L): class logits over the classes and a last "no object" class (Linear), and a box
  (cx, cy, w, h) in [0, 1] of the image (a 3-layer ReLU MLP, sigmoid).

DETR's own decoder is post-norm, adds the query and image positions at every layer and reads a ResNet's feature
map; pre-norm blocks and positions added once keep this one like vitx's ViT, whose blocks its encoder loads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .image_side import ImageSide
from .vit import Mlp, PatchEmbed, _init_weights
from .vqa import Attention, Block


@dataclass(frozen=True)
class DETRConfig(ImageSide):
    classes: tuple[str, ...] = ()   # the object classes; the logits have one more, "no object", last
    encoder_layers: int = 6
    decoder_layers: int = 3
    queries: int = 8


class DecoderLayer(nn.Module):
    """q += SelfAttn(LN(q)); q += CrossAttn(LN(q), LN(i)); q += MLP(LN(q))."""

    def __init__(self, cfg: DETRConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm_memory = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cross=True)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = q + self.self_attn(self.norm1(q))
        q = q + self.cross_attn(self.norm2(q), self.norm_memory(memory))
        return q + self.mlp(self.norm3(q))


class BoxHead(nn.Module):
    """(cx, cy, w, h) = sigmoid(MLP(x)), three linear layers with ReLU between them."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).sigmoid()


class DETR(nn.Module):
    """(logits (B, Q, classes + 1), boxes (B, Q, 4)) = net(images (B, 3, H, W)); boxes as (cx, cy, w, h), fractions
    of the image's width and height. ``every_layer=True`` gives them after every decoder layer, stacked first
    (L, B, Q, ...): DETR's auxiliary losses."""

    def __init__(self, cfg: DETRConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        dim, grid = cfg.embed_dim, cfg.image_size // cfg.patch_size
        self.grid_size = (grid, grid)
        self.patch_embed = PatchEmbed(cfg)
        self.image_pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.encoder_layers))
        self.query_embed = nn.Parameter(torch.randn(1, cfg.queries, dim) * 0.02)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.class_head = nn.Linear(dim, len(cfg.classes) + 1)
        self.box_head = BoxHead(dim)
        self.apply(_init_weights)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.image_pos
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, images: torch.Tensor, every_layer: bool = False):
        memory = self.encode(images)
        q = self.query_embed.expand(images.shape[0], -1, -1)
        states = []
        for layer in self.decoder:
            q = layer(q, memory)
            states.append(q)
        q = self.norm(torch.stack(states) if every_layer else q)
        return self.class_head(q), self.box_head(q)


__all__ = ["DETRConfig", "DETR"]
