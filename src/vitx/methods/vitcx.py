"""ViT-CX (Xie et al., IJCAI 2023): masks from a ViT's own patch-embedding feature maps, scored by their causal
impact on the prediction.

Family "perturbation": like RISE, the map is a mask-weighted sum of the scores of masked forward passes;
only the masks differ (feature maps of the model instead of random grids). It reads block tokens, which
every model gives the tap, and neither attention nor gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage

from ..batch import Batch
from ..errors import VitxError
from ..layout import TokenLayout
from ..memory import COPY, FORWARD, graphs
from ..registry import register
from ..scaling import minmax
from .perturbation import SCORES, check_choice, target_scores, unmodified_scores

XIE_2023 = "Xie, Li, Cao & Zhang, IJCAI 2023, ViT-CX: Causal Explanation of Vision Transformers"


def feature_masks(tokens: torch.Tensor, layout: TokenLayout, size: tuple[int, int]) -> torch.Tensor:
    """(D, H, W) masks of one image from its tokens (N, D): each feature map (the patch tokens' feature d on the
    patch grid) of the layer-normalised tokens, upsampled bilinearly to the image and min-max scaled to [0, 1].

    The authors read the output of the block's LayerNorm; the tap gives the tokens entering the block, so they
    are normalised here without the LayerNorm's affine map, which the min-max scaling of each map removes
    (for a positive gain; a negative one would flip that map)."""
    patches = F.layer_norm(tokens[layout.patches], tokens.shape[-1:])
    maps = patches.T.reshape(-1, 1, *layout.grid)
    return minmax(F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0])


def cluster_masks(masks: torch.Tensor, distance_threshold: float) -> torch.Tensor:
    """(K, H, W): the masks (D, H, W) clustered agglomeratively (complete linkage on the cosine distance,
    clusters no wider than ``distance_threshold``; scipy's ``linkage`` and ``fcluster``), each cluster's sum
    min-max scaled. Cluster order: scipy's labels."""
    flat = masks.flatten(1)
    unit = F.normalize(flat, dim=1)
    distance = (1 - unit @ unit.T).clamp(min=0)
    upper = torch.triu_indices(len(flat), len(flat), 1, device=flat.device)
    tree = linkage(distance[upper[0], upper[1]].double().cpu().numpy(), method="complete")
    labels = torch.as_tensor(fcluster(tree, t=distance_threshold, criterion="distance") - 1, device=flat.device)
    sums = flat.new_zeros(int(labels.max()) + 1, flat.shape[1]).index_add_(0, labels, flat)
    return minmax(sums).view(-1, *masks.shape[1:])


def causal_scores(batch: Batch, masks: list[torch.Tensor], noise: float, score: str, seed: int,
                  internal_batch_size: int) -> list[torch.Tensor]:
    """Per image, (K_i,) δ-insertion scores of its masks: s_k = f_t(x ⊙ M_k + ε_k ⊙ (1 − M_k))
    − f_t(x + ε_k ⊙ (1 − M_k)) + f_t(x), ε_k ~ N(0, noise²) in model input space. The noise keeps the masked
    image closer to the data; the second term takes out what the noise alone does. ε_k, drawn from ``seed``
    mask by mask, is the same for the k-th mask of every image. Both images of a mask run in one pass,
    ``internal_batch_size`` images a pass."""
    x, counts = batch.x, [len(m) for m in masks]
    generator = torch.Generator().manual_seed(seed)
    eps = torch.cat([torch.randn(1, *x.shape[1:], generator=generator) for _ in range(max(counts))]).to(x.device)
    image = torch.repeat_interleave(torch.arange(len(masks), device=x.device), torch.tensor(counts, device=x.device))
    order = torch.cat([torch.arange(c, device=x.device) for c in counts])
    stacked, base = torch.cat(masks)[:, None], unmodified_scores(batch, score)
    scores = []
    for rows in torch.arange(len(image), device=x.device).split(max(1, internal_batch_size // 2)):
        m, i = stacked[rows], image[rows]
        noisy = noise * eps[order[rows]] * (1 - m)
        logits, _ = batch.run(torch.cat([x[i] * m + noisy, x[i] + noisy]), attentions=False, tokens=False)
        masked, unmasked = target_scores(logits, batch.targets[i].repeat(2), score).view(2, -1)
        scores.append(masked - unmasked + base[i])
    return list(torch.cat(scores).split(counts))


def coverage_average(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(H, W) S = Σ_k s_k M_k / Σ_k M_k: the scores averaged at each pixel over the masks covering it,
    which corrects the pixel coverage bias (0 where no mask covers a pixel)."""
    coverage = masks.sum(0)
    return torch.einsum("k,khw->hw", scores, masks) / coverage.clamp(min=torch.finfo(coverage.dtype).tiny)


@register("vit-cx", family="perturbation", paper=XIE_2023, output="pixels",
          cost="(1+2K)F, K masks left after clustering (at most the embedding width)", memory=graphs(FORWARD, COPY))
def vit_cx(batch: Batch, block: int = -1, distance_threshold: float = 0.1, noise: float = 0.1,
           score: str = "probability", seed: int = 0, internal_batch_size: int = 64) -> torch.Tensor:
    """ViT-CX: S = Σ_k s_k M_k / Σ_k M_k. Masks M_k: the feature maps of the patch tokens entering ``block``
    (default: the last), upsampled and min-max scaled, clustered by cosine distance (complete linkage,
    threshold ``distance_threshold``), each cluster's sum min-max scaled. Scores s_k: δ-insertion with
    Gaussian noise, f_t(x ⊙ M_k + ε(1 − M_k)) − f_t(x + ε(1 − M_k)) + f_t(x). The authors' defaults:
    threshold 0.1, noise σ = 0.1 on the normalised input, softmax scores. Their code also divides S by the
    number of masks, a per-image constant left out here."""
    check_choice("score", score, SCORES)
    if not distance_threshold > 0:
        raise VitxError(f"distance_threshold must be positive, got {distance_threshold}")
    if noise < 0:
        raise VitxError(f"noise must be at least 0, got {noise}")
    with torch.no_grad():
        _, tr = batch.run(attentions=False, tokens=False, inputs=True)
        depth = len(tr.inputs)
        if not -depth <= block < depth:
            raise VitxError(f"vit-cx reads the tokens entering block {block}; this model has {depth} blocks "
                            f"(0..{depth - 1} or -{depth}..-1)")
        size = tuple(batch.x.shape[-2:])
        masks = [cluster_masks(feature_masks(tokens, batch.layout, size), distance_threshold)
                 for tokens in tr.inputs[block]]
        scores = causal_scores(batch, masks, noise, score, seed, internal_batch_size)
    return torch.stack([coverage_average(m, s) for m, s in zip(masks, scores)])
