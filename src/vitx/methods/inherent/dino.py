"""DINO's attention maps (Caron et al., ICCV 2021, Emerging Properties in Self-Supervised Vision Transformers, Sec. 4.2
and Fig. 3): the class token's attention to the patches in the last block, head by head, and the paper's mask, the
smallest set of patches holding a share ``mass`` (60%) of a head's attention (facebookresearch/dino's
visualize_attention.py: sort, cumulative sum, keep what lies above 1 − mass); and the paper's Jaccard comparison of
those masks against the object masks (its Table 5 on VOC12, here on shapes: :func:`vitx.evaluate_heads.head_jaccard`).

The maps apply to any ViT with a class token (the zoo's ``shapes-vit-dino``, trained by :mod:`vitx.training.dino`,
``shapes-vit``, a randomly initialised ViT); nothing is trained for the method itself.
"""
from __future__ import annotations

import torch

from ...batch import Batch
from ...errors import VitxError
from ...registry import register

CARON_2021 = "Caron et al., ICCV 2021, Emerging Properties in Self-Supervised Vision Transformers"
MASS = 0.6


def head_count(model) -> int | None:
    """The number of heads of the model's last attention layer, where its module says (None where it does not)."""
    module = model.adapter.attentions()[-1]
    for name in ("num_heads", "num_attention_heads", "heads"):
        if isinstance(getattr(module, name, None), int):
            return getattr(module, name)
    return None


def _check_head(head: int | None, heads: int | None) -> None:
    if head is not None and heads is not None and not -heads <= head < heads:
        raise VitxError(f"method 'dino-attention': head {head} is out of range; the last block has {heads} heads "
                        f"(0 to {heads - 1}, or None for their mean)")


def _fits(model, params: dict) -> None:
    _check_head(params["head"], head_count(model))


def mass_mask(attention: torch.Tensor, mass: float = MASS) -> torch.Tensor:
    """The smallest set of entries holding at least ``mass`` of each row's total (..., N) -> bool (..., N): entries in
    decreasing order are kept while the mass of the larger ones before them is below ``mass`` (the authors' rule:
    ascending cumulative share > 1 − mass)."""
    if not 0 < mass <= 1:
        raise VitxError(f"mass must be in (0, 1], got {mass}")
    values, order = attention.sort(-1, descending=True)
    share = values / values.sum(-1, keepdim=True)
    before = share.cumsum(-1) - share                     # the share held by the larger entries
    return torch.zeros_like(attention, dtype=torch.bool).scatter(-1, order, before < mass)


def class_attention(batch: Batch) -> torch.Tensor:
    """The last block's class-token attention to the patches per head, (B, heads, gh, gw)."""
    with torch.no_grad():
        _, tr = batch.run(attentions=[-1], tokens=False)
    layout = batch.layout
    return layout.to_grid(tr.attentions[0][:, :, layout.require_cls("dino-attention"), layout.patches])


@register("dino-attention", family="self-supervised", paper=CARON_2021, needs={"attention", "cls_token"}, cost="1F",
          fits=_fits, ranges={"mass": "(0, 1]"},
          shows="per head: the class token's attention and the mask holding a share `mass` of it "
                "(exp.details['heads'], exp.details['masks'])")
def dino_attention(batch: Batch, head: int | None = None, mass: float = MASS) -> torch.Tensor:
    """The last block's class-token attention to the patches (Caron et al., ICCV 2021): A_h[cls, patches] of head
    ``head``, or the mean over heads (``head=None``, the default: the best head differs from model to model).
    ``exp.details``: ``heads``, per image each head's map (heads, gh, gw); ``masks``, each head's smallest set of
    patches holding a share ``mass`` of its attention (the paper's 60%), as 0/1 (heads, gh, gw)."""
    attention = class_attention(batch)
    _check_head(head, attention.shape[1])
    masks = mass_mask(attention.flatten(2), mass).view_as(attention)
    batch.details["heads"] = [[[[round(v, 5) for v in row] for row in h] for h in a] for a in attention.tolist()]
    batch.details["masks"] = masks.int().tolist()
    return attention.mean(1) if head is None else attention[:, head]
