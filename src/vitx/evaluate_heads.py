"""DINO's comparison of attention heads with object masks (Caron et al., ICCV 2021, Table 5), on shapes: each head's
smallest mask holding 60% of its class-token attention (:func:`vitx.methods.inherent.dino.mass_mask`) against the
object's patches, by the Jaccard index."""
from __future__ import annotations

import torch

from .explain import explain
from .methods.inherent.dino import MASS, mass_mask
from .metrics.segmentation import jaccard, object_patches


@torch.no_grad()
def head_jaccard(model, data, mass: float = MASS, batch_size: int = 100) -> dict:
    """The paper's comparison (its Table 5) on shapes: per head of the last block, the mean over images of the Jaccard
    index |M ∩ O| / |M ∪ O| between the head's ``mass`` mask M and the object's patches O (:func:`object_patches`),
    and the best head. ``data``: a single-object ShapesData (images in [0, 1], masks (B, H, W)).
    Returns ``{"per_head": [...], "best_head": h, "best": J_h, "mean_map": J of the heads' mean map's mask}``."""
    sums, mean_sum = None, 0.0
    for start in range(0, len(data.images), batch_size):
        x = model.normalize(data.images[start:start + batch_size].to(model.device))
        exp = explain(model, x, method="dino-attention", mass=mass, normalize=False, batch_size=batch_size)
        truth = object_patches(data.masks[start:start + batch_size], model.config.patch_size).to(exp.token_maps.device)
        masks = torch.tensor(exp.details["masks"], dtype=torch.bool, device=truth.device)
        sums = jaccard(masks, truth[:, None]).sum(0) + (0 if sums is None else sums)
        mean_mask = mass_mask(exp.token_maps.flatten(1), mass).view_as(truth)
        mean_sum += jaccard(mean_mask, truth).sum().item()
    per_head = (sums / len(data.images)).tolist()
    best = max(range(len(per_head)), key=per_head.__getitem__)
    return {"per_head": [round(v, 4) for v in per_head], "best_head": best, "best": round(per_head[best], 4),
            "mean_map": round(mean_sum / len(data.images), 4)}
