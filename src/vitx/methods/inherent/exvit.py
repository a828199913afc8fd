"""eX-ViT's explanation (Yu et al. 2022, arXiv 2207.05358): the class map its attribute-guided explainer (AttE) builds
for the target class, read off the model itself (:mod:`vitx.models.exvit`; every formula there is OURS, the paper's
text giving none). On shapes it is scored as weakly supervised segmentation (docs/inherent.md)."""
from __future__ import annotations

import torch

from ...batch import Batch
from ...errors import VitxError
from ...models.exvit import ExViT
from ...registry import register

YU_2022 = ("Yu, Xiang, Fang, Chen & Chi, 2022 (arXiv 2207.05358), eX-ViT: A Novel eXplainable Vision Transformer "
           "for Weakly Supervised Semantic Segmentation")


def _has_attributes(model, params: dict) -> None:
    if not isinstance(model.net, ExViT):
        raise VitxError("method 'ex-vit' reads the class map of eX-ViT's attribute-guided explainer, and this model "
                        f"({type(model.net).__name__}) has none: use an eX-ViT such as the zoo's 'shapes-vit-exvit'")


@register("ex-vit", family="inherent", paper=YU_2022, cost="1F", fits=_has_attributes,
          shows="the class map is the target's share of the logit per patch; exp.details['attribute_maps'] holds "
                "the K attribute maps it is built from")
def ex_vit(batch: Batch) -> torch.Tensor:
    """eX-ViT's class map (OURS, :class:`vitx.models.exvit.ExViT`): M_t(n) = (1/K) Σ_k a_k(n) w_tᵀ x_n, the part of
    the target's logit that patch n adds through AttE's K attribute maps a_k (Σ_n M_t(n) = y_t − b_t exactly).
    ``exp.details["attribute_maps"]``: per image, the K attribute maps on the patch grid (each sums to 1); they do not
    depend on the target."""
    net = batch.model.net
    with torch.no_grad():
        attributes = net.attributes(net.forward_features(batch.x))     # AttE once: the logits and the maps
        batch.record(net.logits(attributes))
        maps, attribute_maps = net.class_maps(attributes, batch.targets)
    batch.details["attribute_maps"] = batch.layout.to_grid(attribute_maps).cpu().tolist()
    return batch.layout.to_grid(maps)
