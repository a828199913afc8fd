"""Chefer et al.'s rules on an encoder-decoder detector (Chefer, Gur & Wolf, ICCV 2021, DETR; the authors'
``DETR/modules/ExplanationGenerator.py``), one map per object, batched: each row of the batch is one object (its
image, its query q and its class c, :class:`vitx.batch.Batch`), so one backward pass of the summed scores y_c(q)
gives every object its own gradients.

Streams i (the image tokens) and q (the object queries) start from R^{ii} = I, R^{qq} = I, R^{qi} = 0; the sites are
walked in forward order with Ā = E_h[(∇A ⊙ A)⁺] (rule 5): the encoder's self-attention, R^{ii} += Ā R^{ii}; per decoder
layer, the queries' self-attention, R^{qq} += Ā R^{qq} and R^{qi} += Ā R^{qi}; their cross-attention over the image,
R^{qi} += (R̄^{qq})ᵀ Ā R̄^{ii}, R̄ = rownorm(R − I) + I (:func:`vitx.methods.bimodal.propagate`). The object's map is
row q of R^{qi} over the image tokens.

The authors' baselines (their ``Generator``), each the object's row q over the image tokens; Ā_qi is the last decoder
layer's cross-attention A_qi with its heads averaged, Ā = E_h A elsewhere:

- raw-attention: Ā_qi.
- rollout: R^{qi} = (R^{qq})ᵀ Ā_qi R^{ii}, R^{ii} the rollout of the encoder's self-attentions, R^{qq} that of the
  decoder's, roll(A_1..A_n) = Â_n ⋯ Â_1 with Â = rownorm(Ā + I).
- attention-gradcam: E_h[w_h A_qi]⁺ with w_h the mean of ∇A_qi,h over the whole matrix (every query, every token).
- partial-lrp: E_h R_A of A_qi, R_A its LRP relevance under Chefer et al.'s rules (:data:`vitx.relevance.CHEFER`,
  R = 1 at the object's class logit), min-max scaled over the whole (queries × tokens) matrix.
- transformer-attribution (their ``generate_transformer_att``): E_h[(∇A_qi ⊙ R_A)⁺].
"""
from __future__ import annotations

import torch

from ..batch import Batch
from ..scaling import minmax
from . import attention
from .bimodal import gradient_weighted, propagate
from .bimodal_baselines import gradcam_site

QUERIES, IMAGE = "queries", "image"


def query_rows(batch: Batch, relevance: torch.Tensor) -> torch.Tensor:
    """Each object's row of a (B, queries, image tokens) matrix, on the token grid (B, gh, gw)."""
    rows = torch.arange(len(batch.queries), device=relevance.device)
    return batch.layout.to_grid(relevance[rows, batch.queries.to(relevance.device)])


def generic_attention(batch: Batch) -> torch.Tensor:
    """The encoder-decoder rules (the module's equations); the object's row of R^{qi}. Cost per object: one
    forward and one backward pass of its image, all objects of a chunk in one pass each."""
    logits, tr = batch.run(tokens=False)
    sites = tr.sites
    gradients = torch.autograd.grad(batch.score(logits), [r.attention for r in sites], allow_unused=True,
                                    materialize_grads=True)
    return query_rows(batch, propagate(sites, gradient_weighted(sites, gradients))[QUERIES, IMAGE])


def last_cross(model) -> int:
    """The index among the adapter's sites of the last decoder layer's cross-attention (queries over the image)."""
    return [i for i, s in enumerate(model.adapter.sites()) if (s.query, s.key) == (QUERIES, IMAGE)][-1]


def raw_attention(batch: Batch) -> torch.Tensor:
    """Ā_qi, the last cross-attention with its heads averaged."""
    with torch.no_grad():
        _, tr = batch.run(attentions=[last_cross(batch.model)], tokens=False)
    return query_rows(batch, tr.sites[0].attention.mean(1))


def rollout(batch: Batch) -> torch.Tensor:
    """(R^{qq})ᵀ Ā_qi R^{ii}: the rollouts of the decoder's and the encoder's self-attentions around Ā_qi."""
    with torch.no_grad():
        _, tr = batch.run(tokens=False)
    sites = tr.sites
    image = attention.rollout_matrix([r.attention for r in sites if r.site.query == r.site.key == IMAGE])
    queries = attention.rollout_matrix([r.attention for r in sites if r.site.query == r.site.key == QUERIES])
    across = sites[last_cross(batch.model)].attention.mean(1)
    return query_rows(batch, queries.transpose(-1, -2) @ across @ image)


def attention_gradcam(batch: Batch) -> torch.Tensor:
    """E_h[w_h A_qi]⁺, w_h the mean of ∇A_qi,h over the whole matrix."""
    logits, tr = batch.run(attentions=[last_cross(batch.model)], tokens=False)
    recorded, = tr.sites
    gradient, = torch.autograd.grad(batch.score(logits), recorded.attention)
    return query_rows(batch, gradcam_site(batch, recorded, gradient))


def partial_lrp(batch: Batch, relevance: torch.Tensor) -> torch.Tensor:
    """E_h R_A of the last cross-attention (``relevance`` (B, heads, queries, tokens)), min-max scaled over its
    whole matrix."""
    return query_rows(batch, minmax(relevance.mean(1)))


def transformer_attribution(batch: Batch, relevance: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """E_h[(∇A ⊙ R_A)⁺] of the last cross-attention (the authors' ``generate_transformer_att``)."""
    return query_rows(batch, (gradient * relevance).clamp(min=0).mean(1))
