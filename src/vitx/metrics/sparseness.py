"""Sparseness: how concentrated a map's relevance is, independent of any model or ground truth."""
from __future__ import annotations

import torch

from .checks import as_maps


def sparseness(maps) -> torch.Tensor:
    """Gini index of |map| (Chalasani et al., ICML 2020, Concise Explanations of Neural Networks using
    Adversarial Training), the definition of Quantus's ``Sparseness``.

    With a = |m| flattened to n values sorted ascending, a_(1) ≤ … ≤ a_(n):
    G = Σ_i (2i − n − 1) a_(i) / (n Σ_i a_(i)).
    0 for a uniform map, (n − 1)/n when one pixel holds all the relevance; higher = sparser, more concise.
    G does not depend on the map's scale. An all-zero map is defined as 0 (Quantus adds 1e-7 to every
    value instead, which moves its scores by about 1e-7 on maxima-normalised maps). Returns (B,) float.
    """
    maps = as_maps(maps)
    values = maps.flatten(1).abs().double().sort(1).values
    n = values.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=values.device, dtype=torch.float64) - n - 1
    total = values.sum(1)
    gini = (weights * values).sum(1) / (n * total.clamp(min=torch.finfo(torch.float64).tiny))
    return torch.where(total > 0, gini, torch.zeros_like(gini)).to(maps.dtype)
