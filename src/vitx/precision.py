"""Half-precision models (float16, bfloat16) explained in float32.

Gradients, relevance and attention products lose too much in 16 bits, and a float32 input does not run
through 16-bit weights, so vitx computes an explanation with the network's floating parameters and buffers
in float32 for the call and puts each back in its own dtype afterwards, on error too. float16 and
bfloat16 values convert to float32 and back exactly.
"""
from __future__ import annotations

import contextlib
import warnings
from itertools import chain

import torch
from torch import nn


@contextlib.contextmanager
def in_float32(net: nn.Module):
    """Run the block with ``net``'s floating parameters and buffers in float32, then restore each one's dtype
    (the same tensors: only their data is swapped). Yields the dtypes it converted from (empty when the model
    was float32 already) and warns once, in one line, when there were any."""
    tensors = [t for t in chain(net.parameters(), net.buffers())
               if t.is_floating_point() and t.dtype != torch.float32]
    dtypes = [t.dtype for t in tensors]
    names = sorted({str(d).removeprefix("torch.") for d in dtypes})
    if names:
        warnings.warn(f"vitx: the model is {'/'.join(names)}; the explanation is computed in float32 (the weights "
                      "are converted for the call and restored after it)", stacklevel=3)
    try:
        for t in tensors:
            t.data = t.data.float()
        yield tuple(names)
    finally:
        for t, dtype in zip(tensors, dtypes):
            t.data = t.data.to(dtype)
