"""Relevance-propagation methods: LRP and its transformer variants, run as one forward and one modified
backward pass through the rules of :mod:`vitx.relevance` bound to the model by the tap (transformer
attribution adds a plain backward through the same forward).

Notation: R_A the LRP relevance of a block's attention A (B, heads, N, N), ∇A = ∂y_t/∂A the plain
gradient, E_h the mean over heads, row c the head's row (the class token's, or the mean of the patch rows of a mean-pooled
head: :func:`~vitx.methods.attention.head_row`), x the model input.

``precision="float64"`` runs the rules on a float64 copy of the model and images (the user's model is not
touched) after the float32 forward that fixes the targets: for images where float32 rounding in the rules'
divisions changes the map.
"""
from __future__ import annotations

import copy
from functools import wraps

import torch

from ..batch import Batch
from ..errors import VitxError
from ..registry import register
from ..relevance import ATTNLRP, CHEFER
from ..relevance.rules import divide
from ..trace import Recorded
from . import bimodal_baselines, detection
from .attention import head_row, from_block, generic_relevance

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}

CHEFER_2021 = "Chefer, Gur & Wolf, CVPR 2021, Transformer Interpretability Beyond Attention Visualization"
BACH_2015 = ("Bach et al., PLOS ONE 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by "
             "Layer-Wise Relevance Propagation, with Chefer, Gur & Wolf's transformer rules (CVPR 2021)")
VOITA_2019 = ("Voita et al., ACL 2019, Analyzing Multi-Head Self-Attention, as applied to ViTs by Chefer, Gur & Wolf "
              "(CVPR 2021)")
ACHTIBAT_2024 = ("Achtibat et al., ICML 2024, AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for "
                 "Transformers")


def unit_relevance(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
    """Σ_i y_i / stop_grad(y_i) over each image's target logit: backpropagated, it starts LRP with R = 1
    at the target (Chefer et al.'s one-hot start), since R_y = y ⊙ g_y."""
    chosen = logits.gather(1, batch.targets[:, None])
    return divide(chosen, chosen.detach()).sum()


def pixel_relevance(batch: Batch, rules, start) -> torch.Tensor:
    """Relevance of every input value (B, 3, H, W) after one forward and one modified backward, started at
    the target logit by ``start(batch, logits)``; the pixel rule hands it back as the input's gradient."""
    x = batch.input_with_grad()
    logits, _ = batch.run(x, original=True, rules=rules, attentions=False, tokens=False)
    return torch.autograd.grad(start(batch, logits), x)[0]


def check_precision(_config, params: dict) -> None:
    if params["precision"] not in PRECISIONS:
        raise VitxError(f"precision must be 'float32' or 'float64', got {params['precision']!r}")


def check_pre_norm(config, params: dict) -> None:
    """``requires`` for the relevance methods that apply to bi-modal models: the precision, and no region model."""
    check_precision(config, params)
    if config.input == "regions":
        raise VitxError("the relevance rules know the residual additions of pre-norm blocks (vitx's own VQA models), "
                        "and this region model's BERT layers (Hugging Face VisualBERT or LXMERT) are post-norm")


def takes_rules(rules):
    """``fits`` for the registry: the model's every layer has a rule in ``rules`` (a Composite), and its adapter
    names what the rules bind to (the layer that reads the pixels, where each block's residual branches open)."""
    def fits(model, params: dict) -> None:
        try:
            rules.rules_for(model)
        except NotImplementedError:
            raise VitxError(f"the {rules.name} rules do not bind to this {type(model.net).__name__}: its adapter "
                            "does not name the layer that reads the pixels or where each block's residual branches "
                            "open (pre-norm blocks x + f(norm(x)); a post-norm block has no such place)") from None
    return fits


def takes_attribution(model, params: dict) -> None:
    """``fits`` for transformer attribution: Chefer's rules bind, and ``start_layer`` names one of its blocks."""
    takes_rules(CHEFER)(model, params)
    from_block(model.adapter.blocks(), params["start_layer"])


def in_precision(method):
    """Run ``method(batch, ..., precision=...)`` on a twin of the batch in that precision: a copy of the model
    converted to it, the images and the targets (found by the float32 model); the maps come back in float32.
    The method declares ``precision`` in its signature, where the registry reads its parameters; this
    wrapper consumes it. A bi-modal batch's twin reads the same questions, a detector's the same object queries."""
    @wraps(method)
    def run(batch: Batch, *args, precision: str = "float32", **params) -> torch.Tensor:
        dtype = PRECISIONS[precision]
        if dtype == batch.x.dtype:
            return method(batch, *args, **params)
        twin = Batch(copy.deepcopy(batch.model).to(dtype), batch.x.to(dtype), batch.layout, batch.targets,
                     batch.text, batch.queries)
        maps = method(twin, *args, **params)
        if isinstance(maps, dict):     # a bi-modal model's {"image": ..., "text": ...}
            return {name: values.to(batch.x.dtype) for name, values in maps.items()}
        return maps.to(batch.x.dtype)
    return run


def attention_relevance(batch: Batch, blocks=True) -> list[torch.Tensor]:
    """R_A = A ⊙ g_A for the attention of each block in ``blocks`` (the tap's ``attentions``), by Chefer
    et al.'s rules from R = 1 at the target."""
    return site_relevance(batch, blocks)[1]


def site_relevance(batch: Batch, sites=True, gradients: bool = False
                   ) -> tuple[list[Recorded], list[torch.Tensor], list[torch.Tensor] | None]:
    """One forward under Chefer et al.'s rules recording the attention of ``sites`` (the tap's ``attentions``):
    (the recorded sites in forward order, R_A = A ⊙ g_A of each by the rules' backward from R = 1 at the target,
    with ``gradients`` ∇A of each by the plain backward through the same graph (:meth:`Composite.selectable`),
    else None). A site that reaches no answer gets zeros."""
    rules = CHEFER.selectable() if gradients else CHEFER
    logits, tr = batch.run(rules=rules, attentions=sites, tokens=False)
    recorded = tr.sites
    attentions = [r.attention for r in recorded]
    relevances = torch.autograd.grad(unit_relevance(batch, logits), attentions, retain_graph=gradients,
                                     allow_unused=True, materialize_grads=True)
    relevances = [a.detach() * r for a, r in zip(attentions, relevances)]
    if not gradients:
        return recorded, relevances, None
    with rules.switch.plain():
        plain = torch.autograd.grad(batch.score(logits), attentions, allow_unused=True, materialize_grads=True)
    return recorded, relevances, list(plain)


def in_graphs(per_image: float):
    """Memory (:mod:`vitx.memory`): ``per_image`` graphs as measured on ViT-B/16 (the rules' saved operands beside
    the plain graph), twice that in float64."""
    def memory(params: dict) -> tuple[float, float]:
        return per_image * (2 if params["precision"] == "float64" else 1), 0.0
    return memory


@register("lrp", family="relevance", paper=BACH_2015, needs={"gradients"}, output="pixels", cost="1F+1B",
          requires=check_precision, memory=in_graphs(3.0), fits=takes_rules(CHEFER), kinds=("vit", "swin", "detr"))
@in_precision
def lrp(batch: Batch, precision: str = "float32") -> torch.Tensor:
    """LRP from R = 1 at the target logit to the pixels with Chefer et al.'s rules: αβ (α=1, β=0) on linear
    layers, z^B on the patch embedding over the normalised pixel range, the identity rule on LayerNorm, GELU
    and softmax, a uniform split between the operands of q kᵀ and A v, the normalised rule at residual
    additions; R(p) = Σ_c R_x[c, p]."""
    return pixel_relevance(batch, CHEFER, unit_relevance).sum(1)


@register("transformer-attribution", family="relevance", paper=CHEFER_2021,
          needs={"attention", "gradients", "head_row"}, cost="1F+2B", kinds=("vit", "vqa", "detr"),
          requires=bimodal_baselines.authors_form(check_pre_norm, start_layer=0), memory=in_graphs(3.0),
          fits=takes_attribution)
@in_precision
def transformer_attribution(batch: Batch, start_layer: int = 0, precision: str = "float32") -> torch.Tensor:
    """Chefer et al.'s Transformer Attribution: R = I; R ← R + E_h[(∇A_b ⊙ R_A_b)⁺] R for blocks
    b = s..L (``start_layer`` s, 0-based; the authors' ViT scripts use 1), with R_A_b the LRP relevance of
    block b's attention (rules of ``lrp``) and ∇A_b its plain gradient; the head's row of R.
    On a bi-modal model, the authors' form (:mod:`vitx.methods.bimodal_baselines`); on a detector, theirs:
    E_h[(∇A ⊙ R_A)⁺] of the last cross-attention, the object's query row (:mod:`vitx.methods.detection`).

    One forward under the rules, then their backward for R_A and the plain backward for ∇A through the
    same graph (:meth:`Composite.selectable`); ``start_layer`` is checked before it (``fits``)."""
    if batch.model.bimodal:
        found = site_relevance(batch, bimodal_baselines.relevance_sites(batch), gradients=True)
        return bimodal_baselines.transformer_attribution(batch, *found)
    if batch.model.detector:
        _, (relevance,), (gradient,) = site_relevance(batch, [detection.last_cross(batch.model)], gradients=True)
        return detection.transformer_attribution(batch, relevance, gradient)
    blocks = from_block(range(len(batch.model.adapter.attentions())), start_layer)
    _, relevances, gradients = site_relevance(batch, blocks, gradients=True)
    return head_row(batch, generic_relevance(relevances, gradients))  # E_h[(∇A ⊙ R_A)⁺]: R_A in A's place


@register("partial-lrp", family="relevance", paper=VOITA_2019, needs={"attention", "gradients", "head_row"},
          cost="1F+1B", kinds=("vit", "vqa", "detr"), requires=check_pre_norm, memory=in_graphs(3.0),
          fits=takes_rules(CHEFER))
@in_precision
def partial_lrp(batch: Batch, precision: str = "float32") -> torch.Tensor:
    """Partial LRP: the LRP relevance of the last block's attention (rules of ``lrp``), positive part, heads
    averaged, the head's row: R = E_h[(R_A_L)⁺][c, patches]. On a bi-modal model, the authors' form
    (:mod:`vitx.methods.bimodal_baselines`); on a detector, theirs: E_h R_A of the last cross-attention, min-max
    scaled over its matrix, the object's query row (:mod:`vitx.methods.detection`)."""
    if batch.model.bimodal:
        sites, relevances, _ = site_relevance(batch, bimodal_baselines.relevance_sites(batch, last=True))
        return bimodal_baselines.partial_lrp(batch, sites, relevances)
    if batch.model.detector:
        relevance, = attention_relevance(batch, blocks=[detection.last_cross(batch.model)])
        return detection.partial_lrp(batch, relevance)
    relevance, = attention_relevance(batch, blocks=[-1])
    return head_row(batch, relevance.clamp(min=0).mean(1))


@register("attnlrp", family="relevance", paper=ACHTIBAT_2024, needs={"gradients"}, output="pixels", cost="1F+1B",
          requires=check_precision, memory=in_graphs(2.5), fits=takes_rules(ATTNLRP), kinds=("vit", "swin", "detr"))
@in_precision
def attnlrp(batch: Batch, precision: str = "float32") -> torch.Tensor:
    """AttnLRP from R = y_t at the target logit to the pixels: ε-rule on linear layers, the softmax's own
    gradient (its Taylor rule), a uniform split between the operands of q kᵀ and A v, the identity rule on
    GELU and on LayerNorm's division by σ, the z-rule at residual additions, z^B on the patch embedding;
    R(p) = Σ_c R_x[c, p]."""
    return pixel_relevance(batch, ATTNLRP, Batch.score).sum(1)
