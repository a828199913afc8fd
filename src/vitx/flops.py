"""What a forward pass costs: its floating-point operations, counted by ``torch.utils.flop_counter`` (a multiply-add
counts 2), and the images per second it runs at, measured. Attention runs on its math path while counting, so that
the fused kernel's products count as the matmuls they are (the counter has no formula for the CPU's fused
attention). The model cards of pruned and pooled models state both."""
from __future__ import annotations

import time
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


SPEED_BATCH, SPEED_REPEATS = 32, 15   # what a model card's images per second are measured at


@torch.no_grad()
def images_per_second(net: Callable, x: torch.Tensor, repeats: int = SPEED_REPEATS) -> float:
    """Images per second of ``net`` on the batch ``x``: the median wall-clock time of ``repeats`` forwards after one
    warm-up (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    net(x)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        net(x)
        sync()
        times.append(time.perf_counter() - start)
    return round(len(x) / sorted(times)[repeats // 2], 1)
