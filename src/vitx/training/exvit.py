"""The eX-ViT recipe of ``vitx train`` (shapes-vit-exvit): vitx_shapes' body with E-MHA and AttE
(:mod:`vitx.models.exvit`), fine-tuned from ``shapes-vit`` on class labels only (weakly supervised: the masks are
never read in training), and scored for accuracy and for the mIoU of its class maps against the object masks."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import read_checkpoint
from ..data import shapes
from ..metrics.segmentation import segmentation
from ..model import evaluating
from ..models import ARCHITECTURES
from ..models.exvit import discriminability_loss, diversity_loss
from .classifier import Classifier, model_card, require_start
from .recipes import TEST_IMAGES, Recipe

DISCRIMINABILITY, DIVERSITY = 0.5, 0.5   # the attribute losses' weights beside the class cross-entropy (OURS)


class ExViTTrainer(Classifier):
    """eX-ViT from ``shapes-vit``: every weight of the body (the last block's MHSA becomes E-MHA with the same q, k, v
    and output weights), shapes-vit's final norm as the patches' norm and its head as AttE's class weights; E-MHA's
    gate and AttE's attribute queries start afresh. Loss: CE(y) + 0.5 L_dis + 0.5 L_div (OURS)."""

    def __init__(self, recipe: Recipe, out_dir: Path):
        super().__init__(recipe, out_dir)
        state, _ = read_checkpoint(require_start(out_dir / f"{recipe.start}.safetensors"))
        state = {("fc_" + k if k.startswith("norm.") else k): v for k, v in state.items()}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        fresh = ("gate.", "explainer.")
        assert not unexpected and all(any(f in k for f in fresh) for k in missing), (missing, unexpected)
        self.meta = {"losses": {"discriminability": DISCRIMINABILITY, "diversity": DIVERSITY}}

    def loss(self, data) -> torch.Tensor:
        maps, attribute_logits, _ = self.net.attributes(self.net.forward_features(self.model.normalize(data.images)))
        return (F.cross_entropy(attribute_logits.mean(1), data.labels)
                + DISCRIMINABILITY * discriminability_loss(attribute_logits, data.labels)
                + DIVERSITY * diversity_loss(maps))

    def score(self, test_seed: int) -> dict:
        return {**super().score(test_seed), **segmentation_score(self.net, self.model.normalize, test_seed)}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return exvit_card(name, recipe, meta, model_card(name, recipe, meta))


@torch.no_grad()
def segmentation_score(net, normalize, seed: int, n: int = TEST_IMAGES, batch_size: int = 250) -> dict:
    """Mean mIoU (object and background) of the class maps of the images' true classes (the weakly supervised
    segmentation protocol: maps from image-level labels) against the object masks, on ``n`` fresh images of data seed
    ``seed``; maps upsampled bilinearly to the pixels, object where the min-max-scaled map exceeds its mean
    (:func:`vitx.metrics.segmentation.segmentation`)."""
    data = shapes(n=n, seed=seed)
    scores = []
    with evaluating(net):
        for i in range(0, n, batch_size):
            x, labels = normalize(data.images[i:i + batch_size]), data.labels[i:i + batch_size]
            maps, _ = net.class_maps(net.attributes(net.forward_features(x)), labels)
            side = net.grid_size
            pixels = F.interpolate(maps.view(-1, 1, *side), size=x.shape[-2:], mode="bilinear", align_corners=False)
            scores.append(segmentation(pixels[:, 0], data.masks[i:i + batch_size])["miou"])
    return {"class_map_miou": round(torch.cat(scores).mean().item(), 4)}


def exvit_card(name: str, recipe: Recipe, meta: dict, classifier_card: str) -> str:
    """The classifier card with eX-ViT's parts, its losses and the segmentation score of its class maps."""
    cfg, m = ARCHITECTURES[recipe.arch], meta["metrics"]
    for said, meant in (("(vitx's own ViT)", "(vitx's ViT body with eX-ViT's parts, Yu et al. 2022)"),
                        ("- Loss: cross-entropy", "- Loss: cross-entropy and the attribute losses (below)"),
                        ("(all but its head, which starts afresh)", "(its final norm as the patches' norm, its head "
                         "as AttE's class weights; E-MHA's gate and AttE's queries start afresh)")):
        classifier_card = classifier_card.replace(said, meant)
    return classifier_card + f"""
## eX-ViT's parts (every formula OURS: the paper's text gives none; docs/inherent.md)

- E-MHA in the last {cfg.explainable_blocks} block(s): the MHSA's values gated per token and head,
  o_i = Σ_j A_ij s_j v_j, s_j = σ(g·x_j + c) (the gate new, the rest of the weights from `{recipe.start}`).
- AttE replaces the class-token head: {cfg.attributes} attribute maps a_k = softmax over the patches of p_k·W x_n,
  features f_k = Σ_n a_k(n) x_n, logits y = mean_k head(f_k); the class map M_c(n) = mean_k a_k(n) w_c·x_n sums to
  y_c − b_c.
- Loss: CE(y, label) + {meta['losses']['discriminability']:g} L_dis (each attribute's own logits, cross-entropy)
  + {meta['losses']['diversity']:g} L_div (mean cosine similarity of two attributes' maps). Class labels only: the
  masks are never read in training.

## Weakly supervised segmentation

On the same {TEST_IMAGES:,} fresh images: mean mIoU (object and background) of the class map of each image's true class
against its object mask, **{m['class_map_miou']:.3f}** (maps upsampled bilinearly, object where the min-max-scaled
map exceeds its mean: `vitx.metrics.segmentation`). Explain it with `vitx.explain(model, x, method="ex-vit")`.
"""
