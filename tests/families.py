"""The catalog of model families vitx reads: one small random model of each (for the tests and the support
table) and one at 224 px (for benchmarks/families.py). Each framework's entries live in their own
``families_<framework>.py``; this module gathers them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from reference import jitter


@dataclass(frozen=True)
class Family:
    name: str                              # the support table's row
    build: Callable[[], nn.Module]         # a small random config, jittered, in eval mode
    size: tuple[int, int]                  # the (H, W) input of the small build
    build_224: Callable[[], nn.Module]     # the family's default config at 224 px, random weights
    attentions: Callable | None = None     # (net, x) -> (logits, [A_b (B, heads, N, N)] on the graph), not via vitx


def jittered(make: Callable[[], nn.Module], seed: int = 0) -> Callable[[], nn.Module]:
    """A builder that seeds torch, calls ``make`` and jitters the weights (tests/reference.jitter)."""
    def build() -> nn.Module:
        import torch
        torch.manual_seed(seed)
        return jitter(make())
    return build


def catalog() -> list[Family]:
    """Every family, in the support table's order."""
    import families_builtin
    import families_hf
    import families_swin
    import families_timm
    import families_torchvision
    return (families_builtin.FAMILIES + families_timm.FAMILIES + families_torchvision.FAMILIES + families_hf.FAMILIES
            + families_swin.FAMILIES)
