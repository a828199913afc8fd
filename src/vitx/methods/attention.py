"""Attention-based methods: what the attention maps themselves (and their gradients) say.

Every method takes a :class:`~vitx.batch.Batch` and returns each patch's relevance, (B, gh, gw), read
off the head's row unless its docstring says otherwise: the class token's row c, or on a mean-pooled head the mean
of the patch tokens' rows (:func:`head_row`; "row c" below stands for either). Notation: A_b is block b's attention
(B, heads, N, N), ∇A_b = ∂y_t/∂A_b for the target logit y_t, E_h the mean over heads.

On Swin (kind "swin") the head reads the mean of the last stage's tokens, so the class token's row becomes the
mean row u = 1/N_L over the last stage's queries. The attention is windowed, (B, heads, nW, w², w²): the methods
that apply multiply u by each block's dense token-by-token matrix window by window, and across a patch merging
hand each merged token's value to its 2×2 children (:mod:`vitx.windows`, docs/methods.md).
"""
from __future__ import annotations

import torch

from ..batch import Batch
from ..errors import VitxError
from ..memory import ATTENTION, graphs
from ..registry import register
from ..windows import mean_row, times_windows, walk
from . import bimodal, bimodal_baselines, detection

CHEFER_2021 = "Chefer, Gur & Wolf, ICCV 2021, Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
ABNAR_2020 = "Abnar & Zuidema, ACL 2020, Quantifying Attention Flow in Transformers"
BARKAN_2021 = "Barkan et al., CIKM 2021, Grad-SAM: Explaining Transformers via Gradient Self-Attention Maps"
CHEN_2023 = "Chen et al., TMLR 2023, Beyond Intuition: Rethinking Token Attributions inside Transformers"


def head_row(batch: Batch, matrix: torch.Tensor) -> torch.Tensor:
    """The row of the token the head reads over the patch columns of a (..., N, N) matrix -> (..., gh, gw): the
    class token's row, or for a mean-pooled head (pooling "avg") the mean of the patch tokens' rows, the rows the
    head averages."""
    layout = batch.layout
    if batch.model.config.pooling == "avg":
        return layout.to_grid(matrix[..., layout.patches, layout.patches].mean(-2))
    return layout.to_grid(matrix[..., layout.cls_index, layout.patches])


def on_swin(batch: Batch) -> bool:
    return batch.model.config.kind == "swin"


def geometries(batch: Batch) -> list:
    """Each block's window geometry on a Swin (:meth:`vitx.adapters.swin.SwinAdapter.windows`)."""
    adapter = batch.model.adapter
    return [adapter.windows(b) for b in range(len(adapter.blocks()))]


def mean_row_walk(batch: Batch, matrices: list[torch.Tensor], accumulate: bool) -> torch.Tensor:
    """Swin: the mean row over the last block's queries carried back through the windowed ``matrices`` of the last
    blocks and the patch mergings (:func:`vitx.windows.walk`), on the first stage's map (B, H_0, W_0)."""
    shapes = geometries(batch)
    return walk(mean_row(shapes[-1].num_tokens, matrices[-1]), matrices, shapes, accumulate)


@register("raw-attention", family="attention", paper="Vaswani et al., NeurIPS 2017 (attention weights as explanation)",
          needs={"attention", "head_row"}, cost="1F", kinds=("vit", "swin", "vqa", "detr"),
          requires=bimodal_baselines.authors_form(block=-1))
def raw_attention(batch: Batch, block: int = -1) -> torch.Tensor:
    """The head's row of attention over the patches in one block (default the last), heads averaged:
    R = E_h A_b[c, patches]. On Swin the mean over the block's queries of E_h A_b, on its stage's map.
    On a bi-modal model, the [CLS] rows at the last layer (:mod:`vitx.methods.bimodal_baselines`); on a detector,
    the object's query row of the last cross-attention (:mod:`vitx.methods.detection`)."""
    if batch.model.bimodal:
        return bimodal_baselines.raw_attention(batch)
    if batch.model.detector:
        return detection.raw_attention(batch)
    with torch.no_grad():
        _, tr = batch.run(attentions=[block], tokens=False)
    if on_swin(batch):
        geometry = batch.model.adapter.windows(block)
        fused = tr.attentions[0].mean(1)
        return times_windows(mean_row(geometry.num_tokens, fused), fused, geometry).view(-1, *geometry.grid)
    return head_row(batch, tr.attentions[0].mean(1))


def fuse_heads(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise VitxError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


def discard_lowest(attention: torch.Tensor, ratio: float, keep: int | None) -> torch.Tensor:
    """Zero the smallest ``ratio`` of each image's (N, N) entries (and any tied with the last of them),
    never token ``keep``'s self-attention (the class token's; None: none kept)."""
    if not 0 <= ratio < 1:
        raise VitxError(f"discard_ratio must be in [0, 1), got {ratio}")
    count = int(attention[0].numel() * ratio)
    if count == 0:
        return attention
    flat = attention.flatten(1)
    ranked = flat.clone()
    if keep is not None:
        ranked[:, keep * attention.shape[-1] + keep] = float("inf")
    cut = ranked.kthvalue(count, dim=1, keepdim=True).values  # a selection, several times cheaper than topk
    return flat.masked_fill(ranked <= cut, 0.0).view_as(attention)


def from_block(per_block: list, start_layer: int) -> list:
    """``per_block[start_layer:]``, once block ``start_layer`` is known to exist."""
    if not 0 <= start_layer < len(per_block):
        raise VitxError(f"start_layer must be in [0, {len(per_block) - 1}], got {start_layer}")
    return per_block[start_layer:]


def residual_attentions(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
                        start_layer: int = 0, keep: int | None = 0) -> list[torch.Tensor]:
    """Â_b = norm_rows(fuse_h(A_b) + I) for blocks s..L, (B, N, N) each: attention mixed with the residual
    connection as in Abnar & Zuidema's code, every row summing to one."""
    mixed = []
    for attention in from_block(attentions, start_layer):
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio, keep)
        fused = fused + torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
        mixed.append(fused / fused.sum(-1, keepdim=True))
    return mixed


def rollout_matrix(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
                   start_layer: int = 0, keep: int | None = 0) -> torch.Tensor:
    """R = Â_L ⋯ Â_s with Â_b = norm_rows(fuse_h(A_b) + I): attention rollout over blocks s..L."""
    mixed = residual_attentions(attentions, head_fusion, discard_ratio, start_layer, keep)
    result = mixed[0]
    for matrix in mixed[1:]:
        result = matrix @ result
    return result


def whole_matrices(config, params: dict) -> None:
    """``requires`` for rollout: on Swin, ``discard_ratio`` would rank the dense matrix's entries, most of which
    are the zeros between windows."""
    if config.kind == "swin" and params["discard_ratio"] > 0:
        raise VitxError("discard_ratio drops the lowest entries of each token-by-token attention matrix, and on Swin "
                        "most of them are the zeros between windows: use discard_ratio=0 on Swin")


@register("rollout", family="attention", paper=ABNAR_2020, needs={"attention", "head_row"}, cost="1F",
          memory=graphs(ATTENTION), kinds=("vit", "swin", "vqa", "detr"),
          requires=bimodal_baselines.authors_form(whole_matrices, head_fusion="mean", discard_ratio=0.0, start_layer=0))
def rollout(batch: Batch, head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0) -> torch.Tensor:
    """Attention rollout: the head's row of R = Â_L ⋯ Â_s, Â_b = norm_rows(fuse_h(A_b) + I),
    heads fused by mean, max or min, the lowest ``discard_ratio`` of each Â_b's entries dropped. On Swin the
    mean row over the last stage's queries of R = Â_L ⋯ P ⋯ Â_s (P the patch mergings), on the first stage's map;
    ``discard_ratio`` 0 there. On a bi-modal model, Chefer et al.'s rollouts of the text and image sites
    (:mod:`vitx.methods.bimodal_baselines`); on a detector, the encoder's and the decoder's rollouts around the last
    cross-attention (:mod:`vitx.methods.detection`)."""
    if batch.model.bimodal:
        return bimodal_baselines.rollout(batch)
    if batch.model.detector:
        return detection.rollout(batch)
    with torch.no_grad():
        _, tr = batch.run(tokens=False)
        if on_swin(batch):
            return mean_row_walk(batch, residual_attentions(tr.attentions, head_fusion, discard_ratio, start_layer),
                                 False)
    return head_row(batch, rollout_matrix(tr.attentions, head_fusion, discard_ratio, start_layer,
                                           keep=batch.layout.cls_index))


def accumulate(matrices: list[torch.Tensor]) -> torch.Tensor:
    """R = I; R ← R + M_b R for each block's (B, N, N) matrix M_b in order (Chefer et al. 2021, eq. 6)."""
    B, N, _ = matrices[0].shape
    relevance = torch.eye(N, device=matrices[0].device, dtype=matrices[0].dtype).expand(B, N, N)
    for matrix in matrices:
        relevance = relevance + matrix @ relevance
    return relevance


def generic_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """R = I; for each block b: R += E_h[(∇A_b ⊙ A_b)⁺] R   (Chefer et al. 2021, eq. 5-6)."""
    return accumulate([(gradient * attention).clamp(min=0).mean(1)
                       for attention, gradient in zip(attentions, gradients)])


def towers_only(config, params: dict) -> None:
    """``requires`` of generic-attention: its start layers choose the blocks of an image-text model's towers."""
    if config.kind != "clip" and (params["start_layer"] is not None or params["start_layer_text"] is not None):
        raise VitxError("start_layer and start_layer_text choose the first blocks of an image-text model's towers "
                        "(Chefer et al.'s CLIP form); on other models every attention enters the rules")


@register("generic-attention", family="attention", paper=CHEFER_2021, needs={"attention", "gradients", "head_row"},
          cost="1F+1B", memory=graphs(1.25), kinds=("vit", "swin", "vqa", "detr", "clip"), requires=towers_only)
def generic_attention(batch: Batch, start_layer: int | None = None, start_layer_text: int | None = None
                      ) -> torch.Tensor:
    """Chefer et al.'s self-attention rule: R = I, R += E_h[(∇A_b ⊙ A_b)⁺] R over the blocks;
    the head's row of R. On Swin the mean row over the last stage's queries of
    R = (I + Ā_L) ⋯ P ⋯ (I + Ā_1), Ā_b = E_h[(∇A_b ⊙ A_b)⁺], P the patch mergings, on the first stage's map.
    On a bi-modal model, the self- and co-attention rules over its attention sites (:mod:`vitx.methods.bimodal`):
    the image map and the text map of the [CLS] token's row; on an image-text model the rule on each tower from
    its block ``start_layer`` / ``start_layer_text`` on (None: the last, as the authors' CLIP notebook), the image
    map its class token's row, the text map its pooled token's. On a detector, the encoder-decoder rules, per object
    the row of its query (:mod:`vitx.methods.detection`)."""
    if batch.model.bimodal:
        return bimodal.generic_attention(batch, start_layer, start_layer_text)
    if batch.model.detector:
        return detection.generic_attention(batch)
    logits, tr = batch.run(tokens=False)
    gradients = tr.gradients(batch.score(logits))
    if on_swin(batch):
        return mean_row_walk(batch, [(g * a.detach()).clamp(min=0).mean(1) for a, g in zip(tr.attentions, gradients)],
                             True)
    return head_row(batch, generic_relevance([a.detach() for a in tr.attentions], gradients))


@register("attention-gradcam", family="attention", paper="Selvaraju et al., ICCV 2017 (Grad-CAM), on attention as in Chefer et al. 2021",
          needs={"attention", "gradients", "head_row"}, cost="1F+1B", kinds=("vit", "vqa", "detr"),
          requires=bimodal_baselines.authors_form(block=-1))
def attention_gradcam(batch: Batch, block: int = -1) -> torch.Tensor:
    """Grad-CAM on one block's attention: R = ReLU(E_h[w_h A_b[h, c, patches]]), where w_h is the mean
    over patches of ∇A_b[h, c, patches]. On a bi-modal model, the authors' form: w_h the mean of ∇A_h over the
    whole matrix, at the last layer (:mod:`vitx.methods.bimodal_baselines`); on a detector likewise at the last
    cross-attention (:mod:`vitx.methods.detection`)."""
    if batch.model.bimodal:
        return bimodal_baselines.attention_gradcam(batch)
    if batch.model.detector:
        return detection.attention_gradcam(batch)
    logits, tr = batch.run(attentions=[block], tokens=False)
    attention, = tr.attentions
    gradient, = torch.autograd.grad(batch.score(logits), attention)
    cam, grad = head_row(batch, attention.detach()), head_row(batch, gradient)            # (B, heads, gh, gw)
    weights = grad.mean((-2, -1), keepdim=True)
    return (weights * cam).mean(1).clamp(min=0)


def grad_sam_scores(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """r_j = 1/(L·H·N) Σ_b Σ_h Σ_i (A_b ⊙ ReLU(∇A_b))[h, i, j] for every token j, (B, N)."""
    return torch.stack([(a * g.clamp(min=0)).mean((1, 2)) for a, g in zip(attentions, gradients)]).mean(0)


@register("grad-sam", family="attention", paper=BARKAN_2021, needs={"attention", "gradients"}, cost="1F+1B",
          memory=graphs(1.25))
def grad_sam(batch: Batch) -> torch.Tensor:
    """Grad-SAM: R_j = 1/(L·H·N) Σ_b Σ_h Σ_i (A_b ⊙ ReLU(∇A_b))[h, i, j], each patch's attention as a key
    weighted by the positive part of its gradient, averaged over blocks, heads and query rows i.

    Rows: all of them, averaged into one score per column (input token), not only the class token's row.
    The gradient already weights each row by how much it reaches the prediction (in the last block it
    is zero outside the class token's row), so no row has to be picked by hand, and the method needs no
    class token (it applies to mean-pooled models too)."""
    logits, tr = batch.run(tokens=False)
    gradients = tr.gradients(batch.score(logits))
    scores = grad_sam_scores([a.detach() for a in tr.attentions], gradients)
    return batch.layout.to_grid(scores[:, batch.layout.patches])


def head_weighted_attentions(attentions: list[torch.Tensor], gradients: list[torch.Tensor],
                             start_layer: int = 0) -> list[torch.Tensor]:
    """Ā_b = Σ_h w_bh A_bh for blocks s..L, w_bh = I_bh / Σ_h I_bh, I_bh = mean_ij |(A_bhᵀ ∇A_bh)_ij|:
    Chen et al.'s head-wise attention perception, each head weighted by its gradient importance."""
    weighted = []
    for attention, gradient in zip(from_block(attentions, start_layer), from_block(gradients, start_layer)):
        importance = (attention.transpose(-1, -2) @ gradient).abs().mean((-1, -2))          # (B, heads)
        weights = importance / importance.sum(1, keepdim=True).clamp(min=torch.finfo(importance.dtype).tiny)
        weighted.append((weights[:, :, None, None] * attention).sum(1))
    return weighted


def reasoning_feedback(batch: Batch, gradient: torch.Tensor, steps: int, internal_batch_size: int) -> torch.Tensor:
    """F = E_h[(1/steps Σ_k ∇A_L(α_k x))⁺], α_k = k/(steps − 1), k = 0..steps−1: the last block's attention
    gradient integrated along the path from 0 to the model input x (Chen et al. 2023, reasoning feedback).
    ``gradient`` is the α = 1 term, already taken; the other steps − 1 run as stacked copies of the batch."""
    if steps < 2:
        raise VitxError(f"steps must be at least 2 (the path's two ends), got {steps}")
    alphas = torch.linspace(0, 1, steps, dtype=batch.x.dtype, device=batch.x.device)[:-1]
    total = gradient.detach().clone()
    for chunk in alphas.split(batch.copies_per_pass(internal_batch_size)):
        logits, tr = batch.run((chunk.view(-1, 1, 1, 1, 1) * batch.x).flatten(0, 1), attentions=[-1], tokens=False)
        total = total + tr.gradients(batch.score(logits))[0].unflatten(0, (len(chunk), -1)).sum(0)
    return (total / steps).clamp(min=0).mean(1)


@register("beyond-intuition-head", family="attention", paper=CHEN_2023, needs={"attention", "gradients", "head_row"},
          cost="steps×(1F+1B)", ranges={"steps": "[2, inf)"},
          memory=graphs(1.25, 2.0))
def beyond_intuition_head(batch: Batch, steps: int = 20, start_layer: int = 0,
                          internal_batch_size: int = 64) -> torch.Tensor:
    """Beyond Intuition, head-wise: R = (F ⊙ P)[c, patches]. Attention perception P: R = I,
    R ← R + Ā_b R over blocks s..L with Ā_b = Σ_h w_bh A_bh, w_bh ∝ mean_ij |(A_bhᵀ ∇A_bh)_ij| (normalised
    over heads). Reasoning feedback F = E_h[(1/steps Σ_k ∇A_L(α_k x))⁺], α_k = k/(steps − 1): integrated
    gradients on the last block's attention.

    As in the authors' code, the path scales the model input x (baseline 0 in model-input space) and α runs
    over both ends. Their ViT-B scripts start the perception at block 3 (0-based); the default here is
    every block, which applies to models of any depth."""
    logits, tr = batch.run(tokens=False)
    gradients = tr.gradients(batch.score(logits))
    perception = accumulate(head_weighted_attentions([a.detach() for a in tr.attentions], gradients, start_layer))
    feedback = reasoning_feedback(batch, gradients[-1], steps, internal_batch_size)
    return head_row(batch, feedback * perception)


def token_weighted_attentions(attentions: list[torch.Tensor], values: list[torch.Tensor], inputs: list[torch.Tensor],
                              start_layer: int = 0) -> list[torch.Tensor]:
    """Ā_b = E_h(A_b) diag(‖v_j W_oᵀ‖ / ‖z_j‖) for blocks s..L, from A_b (B, heads, N, N), the projected values
    v W_oᵀ (B, N, D) and the block inputs z (B, N, D): Chen et al.'s token-wise attention perception, each key
    token's column scaled by how much the block's value path stretches that token."""
    weighted = []
    for attention, value, z in zip(*(from_block(per_block, start_layer) for per_block in (attentions, values, inputs))):
        norm = z.norm(dim=-1)
        # a token that enters the block as zero (a zero-initialised class token with no position embedding) holds
        # nothing of the image: its column gets 0, not value / 0
        stretch = torch.where(norm > 0, value.norm(dim=-1) / norm.clamp(min=torch.finfo(norm.dtype).tiny), 0.0)
        weighted.append(attention.mean(1) * stretch[:, None, :])
    return weighted


@register("beyond-intuition-token", family="attention", paper=CHEN_2023, needs={"attention", "gradients", "head_row"},
          cost="steps×(1F+1B)", ranges={"steps": "[2, inf)"},
          memory=graphs(1.25, 2.0))
def beyond_intuition_token(batch: Batch, steps: int = 20, start_layer: int = 0,
                           internal_batch_size: int = 64) -> torch.Tensor:
    """Beyond Intuition, token-wise: R = (F ⊙ P)[c, patches]. Attention perception P: R = I, R ← R + Ā_b R over
    blocks s..L with Ā_b = E_h(A_b) diag(‖v_j W_oᵀ‖ / ‖z_j‖), z_j token j entering block b and v_j W_oᵀ its value
    (computed from LN(z_j)) after the output projection W_o, and 0 where z_j = 0. Reasoning feedback F as in
    beyond-intuition-head.

    As in the authors' code: the heads of A_b are averaged, v_j W_oᵀ merges every head's value and leaves the
    projection's bias out, ‖z_j‖ is taken before the block's layer norm (their |P| is P here: P ≥ 0). Their ViT-B
    scripts start the perception at block 6 (0-based); the default here is every block, which applies to models
    of any depth."""
    logits, tr = batch.run(tokens=False, projected_values=True, inputs=True)
    with torch.no_grad():
        perception = accumulate(token_weighted_attentions(tr.attentions, tr.projected_values, tr.inputs, start_layer))
    gradient, = torch.autograd.grad(batch.score(logits), tr.attentions[-1])
    return head_row(batch, reasoning_feedback(batch, gradient, steps, internal_batch_size) * perception)
