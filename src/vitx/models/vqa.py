"""vitx's own visual-question-answering transformers: one stream (VisualBERT-like) and two streams (LXMERT-like).

Both read an image as ViT patch tokens (:class:`vitx.models.vit.PatchEmbed`, so the image side can start from
``shapes-vit``) and a question as word tokens ``[CLS] words [SEP] [PAD]...`` of a word-level vocabulary, and answer
from the final [CLS] token: logits = head(LN(t_L[0])), head = Linear-GELU-Linear.

- ``streams="single"`` (Li et al. 2019, VisualBERT): x_0 = [E_w(ids) + P_t + T_0; E_p(image) + P_i + T_1], then
  ``depth`` pre-norm blocks of self-attention over the joint sequence, padded words masked as keys.
- ``streams="dual"`` (Tan & Bansal, EMNLP 2019, LXMERT): ``text_layers`` self-attention blocks on the words,
  ``image_layers`` on the patches, then ``cross_layers`` cross-modality layers; each reads both streams
  (t, i) and computes t += CoAttn(LN(t), LN(i)) and i += CoAttn(LN(i), LN(t)) from the same (t, i), then one
  self-attention block (attention and MLP) per stream.

``keep`` (B, k) indices of image patches deletes every other patch token after its position embedding: what
the perturbation tests of Chefer et al. 2021 do to the regions of a bi-modal model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .image_side import ImageSide
from .vit import Mlp, PatchEmbed, _init_weights


@dataclass(frozen=True)
class VQAConfig(ImageSide):
    streams: str = "single"          # "single" (VisualBERT-like) or "dual" (LXMERT-like)
    vocabulary: tuple[str, ...] = ()  # every token, the special ones first ([PAD] = 0, [CLS], [SEP], [UNK])
    max_length: int = 12             # text tokens with [CLS] and [SEP]
    answers: tuple[str, ...] = ()
    depth: int = 6                   # single: blocks over the joint sequence
    text_layers: int = 2             # dual: language blocks, image blocks, cross-modality layers
    image_layers: int = 6
    cross_layers: int = 2


class Attention(nn.Module):
    """Multi-head attention of queries from x over keys and values from ``context`` (x itself when None), with
    keys masked by ``key_padding`` (B, Nk) bool, True where a key may be attended. Self-attention holds q, k, v in
    one ``qkv`` layer (vit.Attention's keys, so a ViT's blocks load), cross-attention ``q`` and ``kv``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, cross: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        B, N, _ = x.shape
        return x.reshape(B, N, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def split_heads(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """q (B, heads, Nq, head_dim), k and v (B, heads, Nk, head_dim)."""
        if not self.cross:
            return self._heads(self.qkv(x), 3)
        return (*self._heads(self.q(x), 1), *self._heads(self.kv(context), 2))

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        return self.proj(context.transpose(1, 2).flatten(2))  # also when every key or query was deleted (N = 0)

    def forward(self, x, context=None, key_padding=None):
        mask = None if key_padding is None else key_padding[:, None, None, :]
        return self.merge_heads(F.scaled_dot_product_attention(*self.split_heads(x, context), attn_mask=mask))


class Block(nn.Module):
    """x += Attn(LN(x)); x += MLP(LN(x)), with vit.Block's keys."""

    def __init__(self, cfg: VQAConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x, key_padding=None):
        x = x + self.attn(self.norm1(x), key_padding=key_padding)
        return x + self.mlp(self.norm2(x))


class CoAttention(nn.Module):
    """x += CoAttn(LN(x), LN(context)): one stream's queries over the other stream's keys."""

    def __init__(self, cfg: VQAConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.norm_context = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, cross=True)

    def forward(self, x, context, key_padding=None):
        return x + self.attn(self.norm(x), self.norm_context(context), key_padding)


class CrossLayer(nn.Module):
    """LXMERT's cross-modality layer: both co-attentions from the same (t, i), then a self-attention block each."""

    def __init__(self, cfg: VQAConfig):
        super().__init__()
        self.text_cross, self.image_cross = CoAttention(cfg), CoAttention(cfg)
        self.text_self, self.image_self = Block(cfg), Block(cfg)

    def forward(self, t, i, text_padding, image_padding=None):
        t, i = self.text_cross(t, i, image_padding), self.image_cross(i, t, text_padding)
        return self.text_self(t, text_padding), self.image_self(i, image_padding)


class VQATransformer(nn.Module):
    """logits (B, answers) = net(images (B, 3, H, W), input_ids (B, L), attention_mask (B, L), keep=None)."""

    def __init__(self, cfg: VQAConfig):
        super().__init__()
        if cfg.streams not in ("single", "dual"):
            raise ValueError(f"streams must be 'single' or 'dual', got {cfg.streams!r}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        dim, grid = cfg.embed_dim, cfg.image_size // cfg.patch_size
        self.grid_size = (grid, grid)
        self.patch_embed = PatchEmbed(cfg)
        self.image_pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.word_embed = nn.Embedding(len(cfg.vocabulary), dim)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.max_length, dim) * 0.02)
        if cfg.streams == "single":
            self.type_embed = nn.Parameter(torch.zeros(2, dim))
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        else:
            self.text_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.text_layers))
            self.image_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.image_layers))
            self.cross_layers = nn.ModuleList(CrossLayer(cfg) for _ in range(cfg.cross_layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, len(cfg.answers)))
        self.apply(_init_weights)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embed(input_ids) + self.text_pos[:, :input_ids.shape[1]]

    def embed_image(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.image_pos
        return x if keep is None else x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))

    def forward(self, images, input_ids, attention_mask, keep=None) -> torch.Tensor:
        t, i = self.embed_text(input_ids), self.embed_image(images, keep)
        padding = attention_mask.bool()
        if self.cfg.streams == "single":
            x = torch.cat([t + self.type_embed[0], i + self.type_embed[1]], 1)
            joint = torch.cat([padding, padding.new_ones(i.shape[:2])], 1)
            for block in self.blocks:
                x = block(x, joint)
            t = x
        else:
            for block in self.text_blocks:
                t = block(t, padding)
            for block in self.image_blocks:
                i = block(i)
            for layer in self.cross_layers:
                t, i = layer(t, i, padding)
        return self.head(self.norm(t[:, 0]))


__all__ = ["VQAConfig", "VQATransformer"]
