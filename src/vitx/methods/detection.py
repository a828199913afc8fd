"""Chefer et al.'s rules on an encoder-decoder detector (Chefer, Gur & Wolf, ICCV 2021, DETR; the authors'
``DETR/modules/ExplanationGenerator.py``), one map per object, batched: each row of the batch is one object (its
image, its query q and its class c, :class:`vitx.batch.Batch`), so one backward pass of the summed scores y_c(q)
gives every object its own gradients.

Streams i (the image tokens) and q (the object queries) start from R^{ii} = I, R^{qq} = I, R^{qi} = 0; the sites are
walked in forward order with Ā = E_h[(∇A ⊙ A)⁺] (rule 5): the encoder's self-attention, R^{ii} += Ā R^{ii}; per decoder
layer, the queries' self-attention, R^{qq} += Ā R^{qq} and R^{qi} += Ā R^{qi}; their cross-attention over the image,
R^{qi} += (R̄^{qq})ᵀ Ā R̄^{ii}, R̄ = rownorm(R − I) + I (:func:`vitx.methods.bimodal.propagate`). The object's map is
row q of R^{qi} over the image tokens.
"""
from __future__ import annotations

import torch

from ..batch import Batch
from .bimodal import gradient_weighted, propagate


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
    return query_rows(batch, propagate(sites, gradient_weighted(sites, gradients))["queries", "image"])
