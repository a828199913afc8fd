"""Sanity checks for explanations: does the map depend on what the model learned?"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
from torch import nn

from ..errors import StaleModuleError, VitxError
from ..model import Model, as_model
from .checks import as_targets
from .similarity import spearman, ssim

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)


def randomization(model, x, targets, method: str, params: dict | None = None, *, seed: int = 0,
                  std: float = 0.02, batch_size: int = 32, keep_maps: bool = False) -> dict:
    """Cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018, Sanity Checks for Saliency
    Maps, Sec. 3.1), on transformer blocks.

    The user's model is never touched: a deep copy of its network is wrapped the same way (same adapter
    class, same configuration). For step s = 1 … L (L blocks), the top s blocks of the copy have been
    re-initialised, top first (the last block, then also the one below, …): inside a block every
    normalisation layer (LayerNorm, GroupNorm, BatchNorm, RMSNorm) is reset to the identity (weight 1,
    bias 0, running statistics reset), every other parameter named ``bias`` is set to 0, and every other
    parameter (Linear and convolution weights, LayerScale factors, …) is drawn from N(0, ``std``²), from a
    CPU generator seeded with ``seed``. Embeddings, final norm and head keep their trained values.

    At every step ``vitx.explain(copy, x, method, target=targets, **params)`` is compared, image by
    image, with the explanation of the original model: Spearman rank correlation ρ (ties averaged, as
    ``scipy.stats.spearmanr``) and SSIM of the min-max scaled maps (data range 1, 7×7 windows, as
    ``skimage.metrics.structural_similarity``). Every explanation runs with the global random state seeded
    with ``seed`` (and restored afterwards), so a stochastic method draws the same noise each time.

    A map that does not change when the weights it explains are destroyed fails the check: lower
    similarity is better. Returns a dict: ``blocks`` (L,) how many top blocks are random at each step;
    ``spearman`` and ``ssim`` (B, L) float64; ``randomization_spearman`` (B,) = ρ after the full cascade
    (every block random), the leaderboard score, lower is better; NaN where a map is constant, and at every
    step for a method whose trained module refuses the randomised weights (vit-shapley: its explainer was
    trained for the original weights and checks their fingerprint, so it explains no randomised copy); with
    ``keep_maps``, ``maps`` (B, L+1, H, W), the original explanation first.
    """
    from ..explain import explain  # explain sits above the metrics; imported here to keep imports one-way

    model = as_model(model)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise VitxError(f"x must be a (B, 3, H, W) model input, got {getattr(x, 'shape', type(x).__name__)}")
    targets = as_targets(targets, x.shape[0], model.config.num_classes, x.device)
    params = dict(params or {})

    def run(m: Model) -> torch.Tensor:
        devices = [m.device] if m.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return explain(m, x, method, target=targets, batch_size=batch_size, **params).maps

    original = run(model)
    maps, rho, similarity, blocks = [original], [], [], []
    for count, copied in cascade(model, seed=seed, std=std):
        try:
            current = run(copied)
            rho.append(spearman(original, current))
            similarity.append(ssim(original, current))
        except StaleModuleError:   # its trained module refuses the randomised weights: no map to compare
            current = torch.full_like(original, float("nan"))
            rho.append(torch.full(original.shape[:1], float("nan"), dtype=torch.float64, device=original.device))
            similarity.append(rho[-1].clone())
        blocks.append(count)
        if keep_maps:
            maps.append(current)
    rho, similarity = torch.stack(rho, 1), torch.stack(similarity, 1)
    result = {"blocks": torch.tensor(blocks), "spearman": rho, "ssim": similarity,
              "randomization_spearman": rho[:, -1]}
    if keep_maps:
        result["maps"] = torch.stack(maps, 1)
    return result


def cascade(model, *, seed: int = 0, std: float = 0.02) -> Iterator[tuple[int, Model]]:
    """Yield (s, copy) for s = 1 … L: one deep copy of ``model`` whose top s blocks are re-initialised (see
    :func:`randomization`), the same copy randomised one more block down at each step."""
    model = as_model(model)
    net = copy.deepcopy(model.net)
    copied = Model(net, type(model.adapter)(net), model.config)
    blocks = copied.adapter.blocks()
    if not blocks:
        raise VitxError("this model has no transformer blocks to randomise")
    generator = torch.Generator().manual_seed(seed)
    for count, block in enumerate(reversed(blocks), start=1):
        reinitialise(block, generator, std)
        yield count, copied


def reinitialise(block: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Norms to identity, biases to 0, every other parameter ~ N(0, std²) drawn from ``generator``."""
    norms = [m for m in block.modules() if isinstance(m, NORMS)]
    in_norms = {id(p) for m in norms for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for m in norms:
            m.reset_parameters()
        for name, p in block.named_parameters():
            if id(p) in in_norms:
                continue
            if name.rsplit(".", 1)[-1] == "bias":
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
