"""The Concept Transformer's own explanation (Rigotti et al., ICLR 2022, Attention-based Interpretability with Concept
Transformers): the concept attention of a model whose logits are linear in it (:mod:`vitx.models.concepts`)."""
from __future__ import annotations

import torch

from ...batch import Batch
from ...errors import VitxError
from ...models.concepts import ConceptViT
from ...registry import register

RIGOTTI_2022 = "Rigotti et al., ICLR 2022, Attention-based Interpretability with Concept Transformers"


def _has_concepts(model, params: dict) -> None:
    if not isinstance(model.net, ConceptViT):
        raise VitxError(f"method 'concept-transformer' reads a Concept Transformer head, and this model "
                        f"({model.config.name or type(model.net).__name__}) has none: use a model with concepts, "
                        "such as the zoo's 'shapes-vit-concepts'")


@register("concept-transformer", family="inherent", paper=RIGOTTI_2022, cost="1F", fits=_has_concepts,
          shows="per image, the class token's attention over the named global concepts and each patch's attention "
                "over the spatial concepts; the map is each patch's exact share of the target logit")
def concept_transformer(batch: Batch) -> torch.Tensor:
    """Each patch's exact share of the target logit through the spatial concept attention. The logits are linear in
    the concept attention:
    y_t = Σ_h Σ_j a_h[j] M^g_h[j, t] + (1/N) Σ_i Σ_h Σ_j A_h[i, j] M^s_h[j, t] + b^g_t + b^s_t
    (a_h the class token's attention over the global concepts, A_h patch i's over the spatial ones, M_h the value maps,
    :meth:`vitx.models.concepts.ConceptAttention.value_map`), so the map is m_t(i) = (1/N) Σ_h Σ_j A_h[i, j]
    M^s_h[j, t], and Σ_i m_t(i) + the global share = y_t exactly. ``exp.details``: ``global_concepts`` (per image,
    {concept: attention}, averaged over heads), ``spatial_concepts`` (per image, the attention of every patch to each
    spatial concept, concepts x gh x gw, averaged over heads), ``spatial_concept_names`` and ``global_share`` (the
    target logit's part that no patch holds: the global stream and both biases)."""
    net: ConceptViT = batch.model.net
    with torch.no_grad():
        out = net.concepts(batch.x)
        batch.record(out.logits)
        t = batch.targets
        spatial = net.spatial_head.value_map()[:, :, t]                                    # (heads, C_s, B)
        shares = torch.einsum("bhnc,hcb->bn", out.spatial_attention, spatial) / out.spatial_attention.shape[2]
        glob_map = net.global_head.value_map()[:, :, t]                                   # (heads, C_g, B)
        global_share = torch.einsum("bhc,hcb->b", out.global_attention, glob_map)
        global_share += net.global_head.proj.bias[t] + net.spatial_head.proj.bias[t]
    cfg = net.cfg
    glob = out.global_attention.mean(1).tolist()
    batch.details["global_concepts"] = [dict(zip(cfg.global_concepts, [round(v, 4) for v in row])) for row in glob]
    per_concept = batch.layout.to_grid(out.spatial_attention.mean(1).transpose(1, 2))     # (B, C_s, gh, gw)
    batch.details["spatial_concepts"] = per_concept.tolist()
    batch.details["spatial_concept_names"] = [list(cfg.spatial_concepts)] * len(t)
    batch.details["global_share"] = global_share.tolist()
    return batch.layout.to_grid(shares)
