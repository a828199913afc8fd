"""Gradient-based methods: Grad-CAM on patch tokens, and input-gradient attributions.

Notation: x the (normalised) input, y_t the target logit, ∇ = ∂y_t/∂x. Input-gradient methods return
pixel maps (B, H, W); their per-channel attributions are exposed for comparison with captum.
"""
from __future__ import annotations

import numpy as np
import torch

from ..batch import Batch
from ..errors import VitxError
from ..memory import graphs
from ..registry import ANY_MODEL, register
from . import bimodal_baselines


READS_OUTPUT = ("swin", "hvt")   # kinds whose Grad-CAM reads a block's output (the others: the tokens entering it)


def gradcam_block(model, params: dict) -> int:
    """``fits`` for gradcam: the index of the block whose tokens it reads, once that block is known to exist (any
    block's output on Swin; on HVT the output of a block of the first stage, the last tokens that are the patch grid;
    the input of blocks 1.. on a ViT)."""
    block, depth = params["block"], len(model.adapter.blocks())
    if model.image_text:    # the image tower's blocks, which come first
        depth = model.adapter.image_depth()
    if model.config.kind == "hvt":
        depth = model.config.levels[0]
    index = block + depth if block < 0 else block
    outputs = model.config.kind in READS_OUTPUT
    if not (0 if outputs else 1) <= index < depth:
        uses = "the output of" if outputs else "the tokens entering"
        within = " of the first stage (the later stages' pooled tokens are not the patch grid)" \
            if model.config.kind == "hvt" else ""
        raise VitxError(f"gradcam uses {uses} block {block}; choose a block{within} in {0 if outputs else 1}.."
                        f"{depth - 1} (or -{depth if outputs else depth - 1}..-1)")
    return index


@register("gradcam", family="gradient", paper="Selvaraju et al., ICCV 2017, Grad-CAM", needs={"gradients"},
          cost="1F+1B", kinds=("vit", "swin", "clip", "hvt"), fits=gradcam_block)
def gradcam(batch: Batch, block: int = -1) -> torch.Tensor:
    """Grad-CAM on the patch tokens T entering block ``block`` (default: the last):
    R = ReLU(Σ_d α_d T[:, d]), α_d = mean over patches of ∂y_t/∂T[:, d]. On Swin, T is the output of block
    ``block`` (default: the last stage's feature map that the final norm and the mean-pooling head read), on its
    stage's map. On HVT, T is the output of block ``block`` of the first stage (default: its last, the patch tokens
    just before the first pooling). On an image-text model, the blocks of its image tower, y_t the pair's
    similarity."""
    index = gradcam_block(batch.model, {"block": block})
    logits, tr = batch.run(attentions=False)
    kind = batch.model.config.kind
    tokens = tr.tokens[index if kind in READS_OUTPUT else index - 1]
    patches, grid = ((slice(None), batch.model.adapter.windows(index).grid) if kind == "swin"
                     else (batch.layout.patches, batch.layout.grid))
    gradient, = torch.autograd.grad(batch.score(logits), tokens)
    weights = gradient[:, patches].mean(1, keepdim=True)
    cam = (weights * tokens.detach()[:, patches]).sum(-1).clamp(min=0)
    return cam.reshape(-1, *grid)


def input_gradients(batch: Batch, inputs: torch.Tensor, internal_batch_size: int) -> torch.Tensor:
    """∂y_t/∂x at each of ``inputs`` (k·B, 3, H, W), stacked copies of the batch, in chunks of
    ``internal_batch_size`` images per forward+backward."""
    grads = []
    for chunk in inputs.split(batch.copies_per_pass(internal_batch_size) * batch.x.shape[0]):
        chunk = chunk.detach().requires_grad_(True)
        logits, _ = batch.run(chunk, attentions=False, tokens=False)
        grads.append(torch.autograd.grad(batch.score(logits), chunk)[0])
    return torch.cat(grads)


def saliency_attributions(batch: Batch) -> torch.Tensor:
    """|∂y_t/∂x| per channel, (B, 3, H, W)."""
    x = batch.input_with_grad()
    logits, _ = batch.run(x, original=True, attentions=False, tokens=False)
    return torch.autograd.grad(batch.score(logits), x)[0].abs()


@register("saliency", family="gradient", paper="Simonyan, Vedaldi & Zisserman, ICLR 2014 workshop, Deep Inside Convolutional Networks",
          needs={"gradients"}, output="pixels", cost="1F+1B", kinds=(*ANY_MODEL, "vqa", "clip", "detr", "hvt"))
def saliency(batch: Batch) -> torch.Tensor:
    """Gradient saliency: R(p) = max_c |∂y_t/∂x_c(p)|. On a bi-modal model also R_j = max_d |∂y_t/∂e_jd| on each
    token's word embedding e_j (:mod:`vitx.methods.bimodal_baselines`)."""
    if batch.model.bimodal:
        return bimodal_baselines.saliency(batch)
    return saliency_attributions(batch).amax(1)


def baseline_for(batch: Batch, baseline) -> torch.Tensor:
    """"black" (0 in image space), "zeros" (0 in model input space) or a float image-space grey level; on a region
    model "black" and "zeros" are zero regions (no features, no box)."""
    if baseline == "zeros" or (baseline == "black" and batch.model.config.input == "regions"):
        return torch.zeros_like(batch.x)
    if batch.model.config.input == "regions":
        raise VitxError(f"a region model's baseline is 'zeros' (or 'black', the same), got {baseline!r}")
    level = 0.0 if baseline == "black" else baseline
    if not isinstance(level, (int, float)):
        raise VitxError(f"baseline must be 'black', 'zeros' or a number in [0, 1], got {baseline!r}")
    return batch.model.normalize(torch.full_like(batch.x, float(level)))


def gauss_legendre(steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes α_k and weights w_k on [0, 1] (``steps`` of each), in ``like``'s dtype and device."""
    if steps < 1:
        raise VitxError(f"steps must be at least 1, got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (torch.tensor((nodes + 1) / 2, dtype=like.dtype, device=like.device),
            torch.tensor(weights / 2, dtype=like.dtype, device=like.device))


def integrated_gradients_attributions(batch: Batch, steps: int = 50, baseline: str | float = "black",
                                      internal_batch_size: int = 64) -> torch.Tensor:
    """(x − x') ⊙ Σ_k w_k ∇y_t(x' + α_k (x − x')) with Gauss–Legendre nodes α_k and weights w_k on [0, 1]."""
    alphas, weights = gauss_legendre(steps, batch.x)
    start = baseline_for(batch, baseline)
    delta = batch.x - start
    path = start[None] + alphas.view(-1, 1, 1, 1, 1) * delta[None]                # (steps, B, 3, H, W)
    grads = input_gradients(batch, path.flatten(0, 1), internal_batch_size).view_as(path)
    return delta * (weights.view(-1, 1, 1, 1, 1) * grads).sum(0)


@register("integrated-gradients", family="gradient", paper="Sundararajan, Taly & Yan, ICML 2017, Axiomatic Attribution for Deep Networks",
          needs={"gradients"}, output="pixels", cost="steps×(1F+1B)", kinds=(*ANY_MODEL, "vqa", "clip", "detr", "hvt"),
          memory=graphs(1.0, 1.0))
def integrated_gradients(batch: Batch, steps: int = 50, baseline: str | float = "black",
                         internal_batch_size: int = 64) -> torch.Tensor:
    """Integrated Gradients, IG_i = (x_i − x'_i) ∫₀¹ ∂y_t(x' + α(x − x'))/∂x_i dα (Gauss–Legendre
    quadrature, steps run as batches), summed over colour channels. On a bi-modal model the path also scales the
    word embeddings from 0, and IG_j = Σ_d e_jd ∫ ∂y_t/∂e_jd dα per token
    (:mod:`vitx.methods.bimodal_baselines`)."""
    if batch.model.bimodal:
        return bimodal_baselines.integrated_gradients(batch, steps, baseline, internal_batch_size)
    return integrated_gradients_attributions(batch, steps, baseline, internal_batch_size).sum(1)


@register("smoothgrad", family="gradient", paper="Smilkov et al., 2017, SmoothGrad: removing noise by adding noise",
          needs={"gradients"}, output="pixels", cost="samples×(1F+1B)", kinds=(*ANY_MODEL, "clip", "detr", "hvt"),
          memory=graphs(1.0, 1.0))
def smoothgrad(batch: Batch, samples: int = 25, noise_level: float = 0.15, seed: int = 0,
               internal_batch_size: int = 64) -> torch.Tensor:
    """SmoothGrad: R(p) = max_c |1/n Σ_k ∂y_t(x + ε_k)/∂x_c(p)|, ε_k ~ N(0, σ²),
    σ = noise_level · (max x − min x) per image. The unit noise draws come from ``seed`` and are the
    same for every image, so an image's map does not depend on the batch it is explained in."""
    if samples < 1:
        raise VitxError(f"samples must be at least 1, got {samples}")
    x = batch.x
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((samples, 1, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
    noisy = x[None] + noise * noise_level * spread[None]
    grads = input_gradients(batch, noisy.flatten(0, 1), internal_batch_size).view_as(noisy)
    return grads.mean(0).abs().amax(1)
