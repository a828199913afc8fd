"""Patch Slimming read as an explanation: which patches the slimmed twin's blocks compute (static masks, the same
for every image) and, per image, the impact score of each patch at the first block."""
from __future__ import annotations

import torch

from ...batch import Batch
from ...pruning.slimming import impact
from ...registry import register
from ...trained import module_path
from .twins import load_pruned, module_checks, record_stages

TANG_2022 = "Tang et al., CVPR 2022, Patch Slimming for Efficient Vision Transformers"

_requires, _fits = module_checks("slimming", "patch-slimming", "a Patch Slimming twin module")


@register("patch-slimming", family="pruning", paper=TANG_2022, needs={"trained_module", "cls_token"},
          cost="2F (the slimmed twin, and again with its first block whole for the score)", requires=_requires,
          fits=_fits, shows="per image, the impact of each patch at the first block; beside it the twin's static "
                            "keep mask of every block (exp.details['kept']), the same for every image")
def patch_slimming(batch: Batch, module: str | None = None, allow_stale: bool = False) -> torch.Tensor:
    """Patch Slimming: the impact of each patch at the twin's first block on the image, Theorem 1 of the paper,
    s_i = G[i, i] · mean_h ‖(P_0^h |Z|)[i, :]‖², G the head-path mean of ‖A[:, i]‖² through the masked attention of
    the blocks above (:mod:`vitx.pruning.slimming`), computed on this image where the search averaged it over a
    calibration set. The score has no gradient and no target (the paper bounds the error of the class token's whole
    output), so the map is the same whatever ``target`` says.
    ``exp.details["kept"]``: the twin's static masks, the patches each block computes: dataset-level, the same
    for every image (only the map is per image); ``["stage_blocks"]``: the blocks; ``["pruned_prediction"]``: the
    twin's prediction. ``module``: a zoo name or a file from ``vitx train`` (default: the zoo's twin,
    ``shapes-vit-slim`` for ``shapes-vit``), refused for other weights unless ``allow_stale``."""
    net = load_pruned(module_path(batch.model.config, "slimming", "patch-slimming", module), batch.x.device)
    prefix, B = net.vit.num_prefix_tokens, len(batch.x)
    with torch.no_grad():
        scores = impact(net.vit, batch.x, net.masks, 0)[:, prefix:]
        logits = net(batch.x)
    record_stages(batch, logits, [[list(kept) for kept in net.masks] for _ in range(B)], list(range(len(net.masks))))
    return batch.layout.to_grid(scores)
