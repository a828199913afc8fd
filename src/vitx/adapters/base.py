"""What the tap needs to know about a model family: its blocks, its attention, its token layout.

An adapter is the only place that knows a framework's internals. The tap replaces each attention
module's ``forward`` with :meth:`Adapter.attention_forward`, which computes q, k, v exactly as the
framework does and hands them to the tap's ``attend(q, k, v, scale, dropout, mask)``; everything
else about the model runs untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Attend = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Description:
    """What an adapter reads off a model; preprocessing facts (mean, std, names) come from elsewhere."""
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    num_prefix_tokens: int
    cls_index: int | None
    num_classes: int
    dynamic_size: bool           # accepts other image sizes (position embeddings are resampled)
    kind: str = "vit"            # flat token sequence with global self-attention


class Adapter:
    framework = ""

    def __init__(self, net: nn.Module):
        self.net = net

    def describe(self) -> Description:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def attentions(self) -> list[nn.Module]:
        raise NotImplementedError

    def attention_forward(self, module: nn.Module, attend: Attend) -> Callable:
        """A replacement for ``module.forward`` that routes the attention product through ``attend``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) for images x (B, 3, H, W)."""
        return self.net(x)


def pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) or not hasattr(value, "__len__") else tuple(map(int, value))
