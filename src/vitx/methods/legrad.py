"""LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, "LeGrad: An Explainability Method for Vision
Transformers via Feature Formation Sensitivity", arXiv:2404.03214, 2024): how sensitive each block's feature is to
that block's attention, the blocks' sensitivities summed.

For an image-text pair with prompt embedding t (unit), block l's tokens z^l (B, N, D) give a feature of their own,
f^l = P(mean_j z^l_j), P the image tower's final norm and projection, and a score s^l = cos(f^l, t). With A^l block l's
attention (B, heads, N, N):

    E^l = mean_h mean_i ReLU(∂s^l / ∂A^l)[h, i, patches],        LeGrad = Σ_{l ≥ L − layers} E^l,

min-max scaled by :func:`vitx.explain`. As the authors' open_clip code: the gradient alone (not ⊙ A), every query row
(class token included) averaged, the last two blocks by default (their ``layer_index=-2``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch import Batch
from ..errors import VitxError
from ..memory import graphs
from ..registry import register

LEGRAD = "Bousselham et al., arXiv 2024, LeGrad: An Explainability Method for Vision Transformers via Feature Formation Sensitivity"


@register("legrad", family="attention", paper=LEGRAD, needs={"attention", "gradients", "head_row"}, cost="1F+1B",
          memory=graphs(1.25), kinds=("clip",))
def legrad(batch: Batch, layers: int = 2) -> torch.Tensor:
    """LeGrad: E = Σ_l mean_h mean_i ReLU(∂s^l/∂A^l)[i, patches] over the image tower's last ``layers`` blocks,
    s^l the cosine of the prompt's embedding with block l's mean token through the tower's final norm and
    projection."""
    adapter = batch.model.adapter
    depth = adapter.image_depth()
    if layers > depth:
        raise VitxError(f"legrad: layers={layers} is more than the image tower's {depth} blocks")
    _, tr = batch.run()
    with torch.no_grad():
        prompts = F.normalize(adapter.text_features(batch.text), dim=-1)
    patches, total = batch.layout.patches, 0
    for block in range(depth - layers, depth):
        feature = F.normalize(adapter.project_tokens(tr.tokens[block].mean(1)), dim=-1)
        gradient, = torch.autograd.grad((feature * prompts).sum(), tr.attentions[block], retain_graph=True)
        total = total + gradient.clamp(min=0).mean(1).mean(1)[:, patches]
    return batch.layout.to_grid(total)
