"""vitx's image-text model (Radford et al., ICML 2021, CLIP), small enough to train on the shapes captions.

- Image tower: vitx's ViT (:class:`vitx.models.vit.VisionTransformer`, so it can start from ``shapes-vit``); its
  head, applied to the final class token, is the image projection.
- Text tower: word embeddings plus learned positions, ``text_layers`` pre-norm self-attention blocks over
  ``[CLS] words [SEP] [PAD]...`` (padding masked as keys), LayerNorm; the [CLS] token, projected, is the text's
  embedding.
- Similarity: s(image, text) = exp(t) · cos(f_image, f_text), t a learned log temperature started at log(1 / 0.07).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .image_side import ImageSide
from .vit import ViTConfig, VisionTransformer, _init_weights
from .vqa import Block


@dataclass(frozen=True)
class CLIPConfig(ImageSide):
    image_layers: int = 6
    vocabulary: tuple[str, ...] = ()  # every token, the special ones first ([PAD] = 0, [CLS], [SEP], [UNK])
    max_length: int = 16              # text tokens with [CLS] and [SEP]
    text_layers: int = 3
    proj_dim: int = 64

    def vision(self) -> ViTConfig:
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, embed_dim=self.embed_dim,
                         depth=self.image_layers, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                         num_classes=self.proj_dim, in_chans=self.in_chans, qkv_bias=self.qkv_bias, stem=self.stem)


class CLIP(nn.Module):
    """similarity logits (B_images, B_texts) = net(images (B, 3, H, W), input_ids (T, L), attention_mask (T, L))."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.visual = VisionTransformer(cfg.vision())
        self.word_embed = nn.Embedding(len(cfg.vocabulary), dim)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.max_length, dim) * 0.02)
        self.text_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(dim, eps=1e-6)
        self.text_proj = nn.Linear(dim, cfg.proj_dim, bias=False)
        for module in (self.word_embed, *self.text_blocks, self.text_proj):
            module.apply(_init_weights)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (B, proj_dim)."""
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings (T, proj_dim)."""
        return F.normalize(self.text_features(input_ids, attention_mask), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final [CLS] token projected, (T, proj_dim)."""
        t = self.word_embed(input_ids) + self.text_pos[:, :input_ids.shape[1]]
        padding = attention_mask.bool()
        for block in self.text_blocks:
            t = block(t, padding)
        return self.text_proj(self.text_norm(t[:, 0]))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * self.encode_image(images) @ self.encode_text(input_ids, attention_mask).T


__all__ = ["CLIPConfig", "CLIP"]
