"""Chefer et al.'s rules on the attention sites of a bi-modal model (Chefer, Gur & Wolf, ICCV 2021).

Streams s, q (a two-stream model's "text" and "image", or a single-stream model's "joint" tokens) carry relevance
maps R^{sq} (B, N_s, N_q), starting from R^{ss} = I and R^{sq} = 0. The recorded sites are walked in the order the
forward ran them, each with Ā = E_h[(∇A ⊙ A)⁺] (rule 5, per image: the heads of each image averaged alone):

- self-attention of stream s (rules 6, 7): R^{ss} += Ā R^{ss}, and R^{sq} += Ā R^{sq} for every other stream q;
- co-attention of queries s over keys q (rules 10, 11): R^{sq} += (R̄^{ss})ᵀ Ā R̄^{qq} and R^{ss} += Ā R^{qs},
  with R̄ = rownorm(R − I) + I (eqs. 8, 9). The co-attention sites of one cross-modality layer read the same
  inputs, so they read the same R: their additions are computed first and added together (the authors' order).

The head reads the text stream's [CLS] token (Hugging Face's VisualBERT for VQA: the question's last word piece, the
adapter's ``head_token``): the text map is its row of R^{tt} (its own entry and [CLS]'s set to 0), the image map its
row of R^{ti} (in one stream, the row of R over the text and the image columns).
Where the authors' code differs: it averages heads over the whole batch (their runs have one pair per batch), and a
row of R − I that sums to zero gives NaN there; here such a row is left as it is (R̄ = R on it).
"""
from __future__ import annotations

import torch

from ..batch import Batch
from ..errors import VitxError
from ..trace import Recorded


def gradient_weighted(sites: list[Recorded], gradients: list[torch.Tensor]) -> list[torch.Tensor]:
    """Ā = E_h[(∇A ⊙ A)⁺] per site, (B, Nq, Nk) (rule 5)."""
    return [(g * r.attention.detach()).clamp(min=0).mean(1) for r, g in zip(sites, gradients)]


def normalised(relevance: torch.Tensor) -> torch.Tensor:
    """R̄ = rownorm(R − I) + I (eqs. 8, 9) for a batch of square R; a row of R − I summing to 0 stays as it is."""
    eye = torch.eye(relevance.shape[-1], device=relevance.device, dtype=relevance.dtype)
    residual = relevance - eye
    sums = residual.sum(-1, keepdim=True)
    return torch.where(sums != 0, residual / sums, residual) + eye


def propagate(sites: list[Recorded], weights: list[torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """R^{sq} for every pair of streams after walking ``sites`` in order with their weights Ā (see the module)."""
    sizes = {}
    for r in sites:
        sizes[r.site.query], sizes[r.site.key] = r.attention.shape[-2], r.attention.shape[-1]
    like = weights[0]
    B = like.shape[0]
    relevance = {(s, q): (torch.eye(sizes[s], device=like.device, dtype=like.dtype).expand(B, -1, -1) if s == q else
                          like.new_zeros(B, sizes[s], sizes[q])) for s in sizes for q in sizes}
    i = 0
    while i < len(sites):
        site = sites[i].site
        if site.is_self:
            for q in sizes:
                relevance[site.query, q] = relevance[site.query, q] + weights[i] @ relevance[site.query, q]
            i += 1
            continue
        additions = {}
        while i < len(sites) and not sites[i].site.is_self and sites[i].site.block == site.block:
            s, q, a = sites[i].site.query, sites[i].site.key, weights[i]
            additions[s, q] = normalised(relevance[s, s]).transpose(-1, -2) @ a @ normalised(relevance[q, q])
            additions[s, s] = a @ relevance[q, s]
            i += 1
        for pair, addition in additions.items():
            relevance[pair] = relevance[pair] + addition
    return relevance


def head_rows(batch: Batch, relevance: dict[tuple[str, str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows of the tokens that explain each modality (the adapter's :meth:`readers`: the head's token, [CLS] or
    :meth:`head_token`; an image-text model's image tower class token and pooled text token): {"image": (B, gh, gw),
    "text": (B, L)}, the text row's [CLS] entry and the reading token's own entry set to 0."""
    adapter = batch.model.adapter
    places, readers = adapter.modalities(batch.text.ids.shape[1]), adapter.readers(batch.text)
    rows = torch.arange(len(batch.text), device=batch.text.ids.device)
    maps = {}
    for modality, (stream, columns) in places.items():
        reader, token = readers[modality]
        maps[modality] = relevance[reader, stream][rows, token][:, columns]
    text = maps["text"].clone()
    text[rows, readers["text"][1]] = 0
    return {"image": batch.layout.to_grid(maps["image"]), "text": text_row(batch, text)}


def text_row(batch: Batch, values: torch.Tensor) -> torch.Tensor:
    """Per-token values (B, L) as a text map: the [CLS] entry and the padding set to 0."""
    values = values.clone()
    values[:, 0] = 0
    return values * batch.text.mask


def generic_attention(batch: Batch, start_layer: int | None = None, start_layer_text: int | None = None
                      ) -> dict[str, torch.Tensor]:
    """Chefer et al.'s rule set on every attention site of the model, the maps read off the rows of
    :func:`head_rows`. An image-text model's towers only meet in the similarity, so each tower's R is the
    self-attention rule alone from its block ``start_layer`` (image) or ``start_layer_text`` (text) on; None: the
    last block, as the authors' CLIP notebook (their start_layer -1)."""
    logits, tr = batch.run(tokens=False)
    sites = tr.sites
    if batch.model.image_text:
        sites = from_blocks(sites, {"image": start_layer, "text": start_layer_text})
    gradients = torch.autograd.grad(batch.score(logits), [r.attention for r in sites], allow_unused=True,
                                    materialize_grads=True)   # a last layer's image-side sites reach no answer
    return head_rows(batch, propagate(sites, gradient_weighted(sites, gradients)))


def from_blocks(sites: list[Recorded], first: dict[str, int | None]) -> list[Recorded]:
    """The sites of each stream from its block ``first[stream]`` on (None: its last block); a VitxError for a
    stream that would keep none."""
    depth = {}
    for r in sites:
        depth[r.site.query] = max(depth.get(r.site.query, 0), r.site.block + 1)
    start = {stream: depth[stream] - 1 if first.get(stream) is None else first[stream] for stream in depth}
    for stream, block in start.items():
        if block >= depth[stream]:
            name = "start_layer" if stream == "image" else f"start_layer_{stream}"
            raise VitxError(f"{name}={block} is beyond the {stream} tower's {depth[stream]} blocks "
                            f"(0-{depth[stream] - 1})")
    return [r for r in sites if r.site.block >= start[r.site.query]]
