"""Floating-point operations of a forward pass, counted by ``torch.utils.flop_counter`` (a multiply-add counts 2).
Attention runs on its math path while counting, so that the fused kernel's products count as the matmuls they are
(the counter has no formula for the CPU's fused attention)."""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)``."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()
