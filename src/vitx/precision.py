"""Explanations computed in full float32: half-precision models (float16, bfloat16) converted for the call, and
TF32 off on CUDA.

Gradients, relevance and attention products lose too much in 16 bits, and a float32 input does not run
through 16-bit weights, so vitx computes an explanation with the network's floating parameters and buffers
in float32 for the call and puts each back in its own dtype afterwards, on error too. float16 and
bfloat16 values convert to float32 and back exactly. On CUDA, PyTorch runs float32 convolutions (and, if the
user allows it, matrix products) in TF32, with 10 mantissa bits: measured on an H200, the patch embedding's TF32
convolution alone left lrp's maps of the shapes ViT uncorrelated with the CPU's (Pearson r from −0.30 to 0.91
over eight images) and IG's 5% off; with TF32 off every method agrees with the CPU (lrp r ≥ 0.94, the others
≥ 0.9998). :func:`full_float32` turns it off for the call.
"""
from __future__ import annotations

import contextlib
import warnings
from itertools import chain

import torch
from torch import nn


@contextlib.contextmanager
def in_float32(net: nn.Module, warn: bool = True):
    """Run the block with ``net``'s floating parameters and buffers in float32, then restore each one's dtype
    (the same tensors: only their data is swapped). Yields the dtypes it converted from (empty when the model
    was float32 already) and, with ``warn``, warns once, in one line, when there were any."""
    tensors = [t for t in chain(net.parameters(), net.buffers())
               if t.is_floating_point() and t.dtype != torch.float32]
    dtypes = [t.dtype for t in tensors]
    names = sorted({str(d).removeprefix("torch.") for d in dtypes})
    if names and warn:
        warnings.warn(f"vitx: the model is {'/'.join(names)}; the explanation is computed in float32 (the weights "
                      "are converted for the call and restored after it)", stacklevel=3)
    try:
        for t in tensors:
            t.data = t.data.float()
        yield tuple(names)
    finally:
        for t, dtype in zip(tensors, dtypes):
            t.data = t.data.to(dtype)


@contextlib.contextmanager
def full_float32():
    """Run the block with TF32 off for float32 convolutions and matrix products on CUDA, then restore the user's
    settings (on error too); nothing changes on the CPU."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
