"""Concept Vision Transformer (Rigotti et al., ICLR 2022, Attention-based Interpretability with Concept Transformers):
vitx's ViT whose head is a Concept Transformer.

A concept head is a cross-attention from tokens to C learned concept embeddings E (C, D): per head h,
``A_h = softmax(LN(x) W_q,h (E W_k,h)ᵀ / √d_h)`` (tokens x concepts), values ``V_h = E W_v,h`` (C, d_h), and
``out = Σ_h A_h V_h W_o,h + b`` (W_o the output projection to the classes). The values and W_o do not depend on the
input, so ``out = Σ_h A_h M_h + b`` with the value map ``M_h = V_h W_o,h`` (C, classes): each concept votes for the
classes with a fixed row, and the logits are linear in the concept attention (:meth:`ConceptAttention.value_map`).
Two heads, as the authors' ``ConceptTransformerVIT``: global concepts attended by the class token, spatial concepts
attended by every patch token, ``logits = out_global(cls) + mean_patches out_spatial(patch)``.

Where we follow and differ from the authors' code (IBM/concept_transformer, ``ctc/vit.py`` and ``ctc/ctc.py``): the
same cross-attention (bias-free query and key-value projections, concepts initialised N(0, 1/D) truncated, an output
projection with a bias, the spatial stream averaged over the patches); no attention dropout (vitx's ViT has none),
no unsupervised concepts, and one attention head by default (the authors use several and average their attention for
the explanation and its loss, which leaves the logits free of that average; with one head the attention that is
supervised and shown is exactly the one the logits are linear in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .vit import ViTConfig, VisionTransformer


@dataclass(frozen=True)
class ConceptViTConfig(ViTConfig):
    global_concepts: tuple[str, ...] = ()   # names of the concepts the class token attends to
    spatial_concepts: tuple[str, ...] = ()  # names of the concepts each patch token attends to
    concept_heads: int = 1


class ConceptAttention(nn.Module):
    """Cross-attention from tokens (B, N, D) to ``concepts`` learned embeddings, projected to ``classes`` outputs."""

    def __init__(self, dim: int, concepts: int, classes: int, heads: int):
        super().__init__()
        if concepts < 1 or heads < 1 or dim % heads:
            raise ValueError(f"a concept head needs >= 1 concept and a head count dividing {dim}; got {concepts} "
                             f"concepts, {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.concepts = nn.Parameter(nn.init.trunc_normal_(torch.zeros(concepts, dim), std=dim ** -0.5))
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, classes)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n, D) -> (..., heads, n, d_h)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The concept attention (B, heads, N, concepts) of tokens ``x`` (B, N, D): each row a softmax over concepts."""
        q, k = self._split(self.q(x)), self._split(self.kv(self.concepts)[:, :self.q.out_features])
        return (q @ k.transpose(-1, -2) * self.head_dim ** -0.5).softmax(-1)

    def value_map(self) -> torch.Tensor:
        """M (heads, concepts, classes): M_h = V_h W_o,h, what each concept adds to each class per unit of attention."""
        v = self._split(self.kv(self.concepts)[:, self.q.out_features:])             # (heads, C, d_h)
        w = self.proj.weight.T.unflatten(0, (self.heads, self.head_dim))            # (heads, d_h, classes)
        return v @ w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per token, the class outputs (B, N, classes) and the concept attention (B, heads, N, concepts)."""
        attn = self.attention(x)
        v = self._split(self.kv(self.concepts)[:, self.q.out_features:])
        return self.proj((attn @ v).transpose(1, 2).flatten(2)), attn


class ConceptOutput(NamedTuple):
    logits: torch.Tensor              # (B, classes)
    global_attention: torch.Tensor    # (B, heads, global concepts): the class token's
    spatial_attention: torch.Tensor   # (B, heads, patches, spatial concepts)


class ConceptViT(VisionTransformer):
    """vitx's ViT with a Concept Transformer head (:class:`ConceptViTConfig`); ``forward`` gives the logits,
    :meth:`concepts` the logits with both concept attentions."""

    def __init__(self, cfg: ConceptViTConfig):
        super().__init__(cfg)
        if not cfg.class_token or cfg.distilled or not (cfg.global_concepts and cfg.spatial_concepts):
            raise ValueError("a concept ViT needs a class token, no distillation token, and global and spatial "
                             "concepts")
        del self.head
        dim, classes, heads = cfg.embed_dim, cfg.num_classes, cfg.concept_heads
        self.global_head = ConceptAttention(dim, len(cfg.global_concepts), classes, heads)
        self.spatial_head = ConceptAttention(dim, len(cfg.spatial_concepts), classes, heads)

    def concept_head(self, x: torch.Tensor) -> ConceptOutput:
        """The head on the last tokens ``x`` (B, prefix + patches, D), after the final norm."""
        out_global, global_attention = self.global_head(x[:, :1])
        out_spatial, spatial_attention = self.spatial_head(x[:, self.num_prefix_tokens:])
        return ConceptOutput(out_global[:, 0] + out_spatial.mean(1), global_attention[:, :, 0], spatial_attention)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.concept_head(x).logits

    def concepts(self, x: torch.Tensor) -> ConceptOutput:
        """Images (B, 3, H, W), model-normalised -> logits and concept attentions."""
        return self.concept_head(self.forward_features(x))
