"""The baselines of Chefer, Gur & Wolf (ICCV 2021) on bi-modal models, each as the authors' code adapts it to a
two-stream model (LXMERT: ``lxmert/lxmert/src/ExplanationGenerator.py``, GeneratorBaselines) and to a one-stream
model (VisualBERT: ``VisualBERT/mmf/models/transformers/backends/ExplanationGenerator.py``).

Notation: the head reads the [CLS] token (row 0) of the text stream t (the joint stream j in one stream); Ā = E_h A
per image; A_tt a text self-attention site, A_ti the text queries' co-attention over the image, A_jj a joint block.
Every method returns {"image": map, "text": (B, L)}, the text row's [CLS] entry and its padding set to 0.

- raw-attention: two streams, the [CLS] rows of Ā_tt and Ā_ti at the last cross layer; one stream, of Ā_jj at the
  last block.
- rollout: two streams, R_tt = roll(A_tt of every text site), R_ti = roll(A_tt but the last)ᵀ Ā_ti roll(A_ii but
  the last) at the last cross layer, roll(A_1..A_n) = Â_n ⋯ Â_1 with Â = rownorm(Ā + I); one stream,
  R = (I + Ā_L) ⋯ (I + Ā_1), rows not normalised (the authors' VisualBERT code; 2^L times the normalised product).
- attention-gradcam: on the sites raw-attention reads, ReLU(E_h[w_h A]), w_h the mean of ∇A_h over the whole
  matrix (every query row and key column), not over the [CLS] row's patch columns as vitx's ViT form.
- saliency, integrated-gradients: the gradient with respect to the pixels and to the word embeddings e_j (the
  output of :meth:`VitxVQAAdapter.text_embedding`, before the position embedding), reduced per token as per pixel;
  on a region model (Hugging Face VisualBERT, LXMERT) per region over its features (and box), the IG path from
  zero regions.
- partial-lrp, transformer-attribution: with R_A the LRP relevance of A under Chefer et al.'s rules
  (:data:`vitx.relevance.CHEFER`, R = 1 at the answer), computed by :mod:`vitx.methods.relevance`. partial-lrp:
  E_h R_A at the sites raw-attention reads, each matrix min-max scaled (no positive part). transformer-attribution:
  two streams, R_tt = Π (I + Ā) over the text self-attention sites, R_ti = Ā at the last text→image co-attention,
  Ā = E_h[(∇A ⊙ R_A)⁺]; one stream, R = Π (I + Ā) over the blocks. The authors' LXMERT code also rolls R_ii over
  the image sites, which no output reads: left out.

Padding: the authors run one unpadded question at a time; here each pair's maps are what that run gives. Padded
tokens are masked as keys, so they change no real token; where the formulas would still read them (the sum over
text rows in R_ti, the mean of ∇A), only real tokens enter.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..batch import Batch
from ..errors import VitxError
from ..scaling import minmax_tokens
from ..trace import Recorded
from . import attention
from .bimodal import head_rows, text_row


def streams(batch: Batch) -> tuple[str, str]:
    """The stream the head reads (its [CLS] token's) and the image's stream: ("text", "image") or twice "joint"."""
    places = batch.model.adapter.modalities(batch.text.ids.shape[1])
    return places["text"][0], places["image"][0]


def last_site(sites: list[Recorded], query: str, key: str) -> Recorded:
    return [r for r in sites if (r.site.query, r.site.key) == (query, key)][-1]


def head_sites(batch: Batch, sites: list[Recorded]) -> dict[tuple[str, str], Recorded]:
    """The last site of the head's stream over itself and over the image (one site in one stream)."""
    head, image = streams(batch)
    return {(head, head): last_site(sites, head, head), (head, image): last_site(sites, head, image)}


def real_tokens(batch: Batch, stream: str, size: int) -> torch.Tensor:
    """(B, size) bool: True at the tokens of ``stream`` that are not padding (every token of an image-only model)."""
    if batch.text is None:
        return torch.ones(batch.x.shape[0], size, dtype=torch.bool, device=batch.x.device)
    real = batch.text.mask.new_ones(batch.text.mask.shape[0], size)
    text_stream, columns = batch.model.adapter.modalities(batch.text.ids.shape[1])["text"]
    if stream == text_stream:
        real[:, columns] = batch.text.mask
    return real


def raw_attention(batch: Batch) -> dict[str, torch.Tensor]:
    """The [CLS] rows of E_h A at the head stream's last self-attention and its last attention over the image."""
    with torch.no_grad():
        _, tr = batch.run(tokens=False)
    return head_rows(batch, {pair: r.attention.mean(1) for pair, r in head_sites(batch, tr.sites).items()})


def rolled(attentions: list[torch.Tensor], size: int, like: torch.Tensor) -> torch.Tensor:
    """Â_n ⋯ Â_1, Â = rownorm(E_h A + I) (:func:`~vitx.methods.attention.rollout_matrix`); I (size × size) for no
    sites."""
    if not attentions:
        return torch.eye(size, device=like.device, dtype=like.dtype).expand(like.shape[0], -1, -1)
    return attention.rollout_matrix(attentions)


def rollout(batch: Batch) -> dict[str, torch.Tensor]:
    """Two streams: R_tt = roll(text sites), R_ti = roll(text sites but the last)ᵀ Ā_ti roll(image sites but the
    last), Ā_ti the last co-attention of text over image (its padded query rows 0). One stream: R = Π (I + Ā_b)."""
    with torch.no_grad():
        _, tr = batch.run(tokens=False)
    head, image = streams(batch)
    if head == image:
        return head_rows(batch, {(head, head): attention.accumulate([r.attention.mean(1) for r in tr.sites])})
    text = [r.attention for r in tr.sites if r.site.query == r.site.key == head]
    pictures = [r.attention for r in tr.sites if r.site.query == r.site.key == image]
    across = last_site(tr.sites, head, image).attention.mean(1) * batch.text.mask[:, :, None]
    queries, keys = across.shape[-2:]
    to_image = rolled(text[:-1], queries, across).transpose(-1, -2) @ across @ rolled(pictures[:-1], keys, across)
    return head_rows(batch, {(head, head): attention.rollout_matrix(text), (head, image): to_image})


def gradcam_site(batch: Batch, recorded: Recorded, grad: torch.Tensor) -> torch.Tensor:
    """ReLU(E_h[w_h A]) (B, Nq, Nk), w_h the mean of ∇A_h over the entries between real tokens."""
    _, _, queries, keys = grad.shape
    site = recorded.site
    real = real_tokens(batch, site.query, queries)[:, :, None] & real_tokens(batch, site.key, keys)[:, None]
    real = real[:, None].to(grad.dtype)
    weights = (grad * real).sum((-2, -1), keepdim=True) / real.sum((-2, -1), keepdim=True)
    return (weights * recorded.attention.detach()).mean(1).clamp(min=0)


def attention_gradcam(batch: Batch) -> dict[str, torch.Tensor]:
    """Grad-CAM on the sites raw-attention reads, per head weighted by the mean of its gradient over the matrix."""
    logits, tr = batch.run(tokens=False)
    chosen = head_sites(batch, tr.sites)
    gradients = torch.autograd.grad(batch.score(logits), [r.attention for r in chosen.values()])
    return head_rows(batch, {pair: gradcam_site(batch, r, g) for (pair, r), g in zip(chosen.items(), gradients)})


def relevance_sites(batch: Batch, last: bool = False) -> list[int]:
    """Indices among the adapter's sites of what the relevance baselines read: the head stream's self-attention
    sites (every one, or with ``last`` its last) and its last site over the image."""
    head, image = streams(batch)
    sites = batch.model.adapter.sites()
    own = [i for i, s in enumerate(sites) if (s.query, s.key) == (head, head)]
    across = [i for i, s in enumerate(sites) if (s.query, s.key) == (head, image)]
    return sorted({*(own[-1:] if last else own), across[-1]})


def partial_lrp(batch: Batch, sites: list[Recorded], relevances: list[torch.Tensor]) -> dict:
    """The [CLS] rows of E_h R_A at ``sites`` (:func:`relevance_sites` with ``last``), each matrix min-max scaled
    over its entries between real tokens, R_A the LRP relevance of A (no positive part: the authors' form)."""
    scaled = {}
    for recorded, relevance in zip(sites, relevances):
        site, matrix = recorded.site, relevance.mean(1)
        real = real_tokens(batch, site.query, matrix.shape[1])[:, :, None] & real_tokens(batch, site.key,
                                                                                         matrix.shape[2])[:, None]
        scaled[site.query, site.key] = minmax_tokens(matrix.flatten(1), real.flatten(1)).view_as(matrix)
    return head_rows(batch, scaled)


def transformer_attribution(batch: Batch, sites: list[Recorded], relevances: list[torch.Tensor],
                            gradients: list[torch.Tensor]) -> dict:
    """R_tt = I, R_tt += Ā R_tt over the text self-attention sites in order, R_ti = Ā at the last text→image
    co-attention, Ā = E_h[(∇A ⊙ R_A)⁺] (one stream: R += Ā R over the blocks); their [CLS] rows."""
    head, image = streams(batch)
    weighted = [(gradient * relevance).clamp(min=0).mean(1) for relevance, gradient in zip(relevances, gradients)]
    pairs = [(r.site.query, r.site.key) for r in sites]
    own = attention.accumulate([w for pair, w in zip(pairs, weighted) if pair == (head, head)])
    if head == image:
        return head_rows(batch, {(head, head): own})
    return head_rows(batch, {(head, head): own, (head, image): weighted[pairs.index((head, image))]})


@contextmanager
def word_embeddings(batch: Batch, scales: torch.Tensor | None = None):
    """While open, each forward's word embeddings (times ``scales``, one per row, when given) are a leaf that
    requires grad, appended to the list it yields; the hook is removed on leaving, by an exception too."""
    leaves = []

    def hook(_module, _inputs, output):
        words = output.detach() if scales is None else scales[:, None, None] * output.detach()
        leaves.append(words.requires_grad_(True))
        return words

    handle = batch.model.adapter.text_embedding().register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


def per_position(batch: Batch, values: torch.Tensor, reduce) -> torch.Tensor:
    """Values of the image input reduced per pixel over its channels, (B, H, W), or on a region model (input
    "regions") per region over its features and box, (B, 1, R)."""
    if batch.model.config.input == "regions":
        return batch.layout.to_grid(reduce(values, -1))
    return reduce(values, 1)


def saliency(batch: Batch) -> dict[str, torch.Tensor]:
    """R(p) = max_c |∂y_t/∂x_c(p)| on the pixels (regions: over each region's values), R_j = max_d |∂y_t/∂e_jd| on
    the word embeddings."""
    x = batch.input_with_grad()
    with word_embeddings(batch) as words:
        logits, _ = batch.run(x, original=True, attentions=False, tokens=False)
    pixels, embedded = torch.autograd.grad(batch.score(logits), [x, words[0]])
    return {"image": per_position(batch, pixels.abs(), torch.amax), "text": text_row(batch, embedded.abs().amax(-1))}


def integrated_gradients(batch: Batch, steps: int, baseline, internal_batch_size: int) -> dict[str, torch.Tensor]:
    """Integrated Gradients along one path that moves both inputs, (x', 0) → (x, e): the image from its baseline
    x', the word embeddings from 0. IG(p) = Σ_c (x − x')_c ∫ ∂y_t/∂x_c dα on the pixels and
    IG_j = Σ_d e_jd ∫ ∂y_t/∂e_jd dα on the tokens (Gauss–Legendre quadrature), which together sum to
    y_t(x, e) − y_t(x', 0)."""
    # imported here: at the top, importing gradient (through attention) would register its methods before
    # attention's, reordering vitx.methods() and every table drawn from it
    from .gradient import baseline_for, gauss_legendre
    alphas, weights = gauss_legendre(steps, batch.x)
    start = baseline_for(batch, baseline)
    delta, count = batch.x - start, batch.x.shape[0]
    pixels, embedded = torch.zeros_like(batch.x), 0.0
    copies = batch.copies_per_pass(internal_batch_size)
    ones = (1,) * batch.x.dim()     # a step's scalar broadcast over a batch of images (or of regions)
    for chunk, weight in zip(alphas.split(copies), weights.split(copies)):
        x = (start[None] + chunk.view(-1, *ones) * delta[None]).flatten(0, 1).requires_grad_(True)
        with word_embeddings(batch, chunk.repeat_interleave(count)) as words:
            logits, _ = batch.run(x, attentions=False, tokens=False)
        dx, de = torch.autograd.grad(batch.score(logits), [x, words[0]])
        pixels = pixels + (weight.view(-1, *ones) * dx.unflatten(0, (len(chunk), count))).sum(0)
        embedded = embedded + (weight.view(-1, 1, 1, 1) * de.unflatten(0, (len(chunk), count))).sum(0)
    with torch.no_grad():
        words = batch.model.adapter.text_embedding()(batch.text.ids)
    return {"image": per_position(batch, delta * pixels, torch.sum),
            "text": text_row(batch, (words * embedded).sum(-1))}


AUTHORS_FORMS = {"vqa": "a bi-modal model", "detr": "a detector"}   # the kinds where a baseline is the authors' form


def authors_form(then=None, **defaults):
    """``requires`` for a method whose bi-modal and detector forms are the authors' only: on a "vqa" or "detr" model
    its parameters ``defaults`` must keep their values; ``then`` (another ``requires``) runs after."""
    def requires(config, params: dict) -> None:
        if config.kind in AUTHORS_FORMS:
            for name, value in defaults.items():
                if params[name] != value:
                    raise VitxError(f"on {AUTHORS_FORMS[config.kind]} this method takes Chefer et al.'s form only, "
                                    f"with {name}={value!r}; got {name}={params[name]!r}")
        if then is not None:
            then(config, params)
    return requires
