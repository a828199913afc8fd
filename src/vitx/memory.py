"""Memory budgets for ``explain()``: how much a method keeps per image on a model, and how much there is.

The unit is the model's **graph**: the bytes autograd keeps for one image's forward pass under the tap with
gradients on (every tensor saved for the backward, each storage counted once, weights not counted), measured
once per model and input size by a one-image probe (:func:`graph_bytes`). A method declares its memory in
graphs with ``register(..., memory=graphs(per_image, per_copy))``: ``per_image`` graphs for every image of a
chunk, and ``per_copy`` for each of the ``internal_batch_size`` perturbed copies it stacks into one pass. The
figures are measured, not derived: ``benchmarks/memory.py`` compares every method's peak (on the CPU its peak
resident memory, which the allocator's reuse can raise above what is live) with its declaration, and
``docs/performance.md`` has the ViT-B/16 table they come from.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .errors import VitxError

FORWARD = 0.25       # a forward pass without gradients (ViT-B/16: 0.11), with what a method keeps of one block
ATTENTION = 0.75     # a forward pass keeping every block's attention (ViT-B/16: rollout 0.37, attention-flow 0.61)
COPY = 0.1           # one of a pass's stacked copies run without gradients (ViT-B/16: rise, occlusion 0.06)
HEAD_ROOM = 0.5      # the default budget: this share of the memory available when explain() starts


def graphs(per_image: float, per_copy: float = 0.0):
    """A declaration: ``per_image`` graphs for every image of a chunk, and ``per_copy`` graphs for every one of
    the ``internal_batch_size`` perturbed copies a method stacks into one pass (``FORWARD`` for copies run
    without gradients, 1 for copies that are differentiated)."""
    def memory(params: dict) -> tuple[float, float]:
        return per_image, per_copy * params.get("internal_batch_size", 0)
    return memory


forward_only, one_graph = graphs(FORWARD), graphs(1.0)


def graph_bytes(model, x: torch.Tensor, text=None) -> int:
    """Bytes autograd keeps for one image's forward under the tap (``x``: one (1, 3, H, W) model input; ``text``: a
    bi-modal model's question for it). Cached on the model per input size, text length, dtype and device."""
    from .trace import trace
    key = (tuple(x.shape[1:]), None if text is None else text.ids.shape[1], x.dtype, str(x.device))
    cache = model.__dict__.setdefault("_graph_bytes", {})
    if key not in cache:
        storages: dict[int, int] = {}
        weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

        def pack(tensor: torch.Tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                trace(model, tokens=False):
            model(x) if text is None else model(x, text)
        cache[key] = sum(storages.values())
    return cache[key]


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: the CUDA allocator's free memory plus what its cache holds,
    or the host's available memory (Linux's MemAvailable, else the free physical pages)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_size(value) -> int:
    """Bytes from an int or a string such as ``"4GB"``, ``"512 MB"``, ``"1.5G"``."""
    if isinstance(value, bool):
        raise VitxError(f"memory must be a size such as '4GB' or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        text = str(value).strip().upper().replace(" ", "").removesuffix("IB").removesuffix("B")
        units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
        scale = units.get(text[-1:], 1) if text else 1
        try:
            size = float(text[:-1] if text[-1:] in units else text) * scale
        except ValueError:
            raise VitxError(f"memory must be a size such as '4GB' or a number of bytes, got {value!r}") from None
    if size <= 0:
        raise VitxError(f"memory must be positive, got {value!r}")
    return int(size)


def megabytes(size: float) -> str:
    mb = size / 2 ** 20
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def plan(method, params: dict, model, x: torch.Tensor, batch_size: int, memory, text=None) -> tuple[int, dict]:
    """(images per chunk, params) within the budget ``memory`` (bytes, a size string, or None: :data:`HEAD_ROOM`
    of what is available on the model's device): at most ``batch_size`` images, and a method's
    ``internal_batch_size`` lowered, with a warning, when its stacked copies alone would not fit (the copies run
    in more passes; the result is the same). A VitxError before any work when one image does not fit."""
    budget = parse_size(memory) if memory is not None else int(HEAD_ROOM * available_bytes(x.device))
    unit = graph_bytes(model, x[:1].clone(), None if text is None else text[:1].to(x.device))
    per_image, per_pass = method.memory(params)
    copies = params.get("internal_batch_size")
    if copies and per_pass and (per_image + per_pass) * unit > budget:
        per_copy = per_pass / copies
        fitting = int((budget / unit - per_image) // per_copy)
        if fitting >= 1:
            warnings.warn(f"vitx: {method.name}'s internal_batch_size lowered from {copies} to {fitting} to fit the "
                          f"memory budget of {megabytes(budget)}", stacklevel=3)
            params = {**params, "internal_batch_size": fitting}
            per_pass = per_copy * fitting
    needed = (per_image + per_pass) * unit
    if needed > budget:
        raise VitxError(f"method {method.name!r} needs about {megabytes(needed)} for one image on this model, "
                        f"more than the memory budget of {megabytes(budget)}; raise memory= (--memory)")
    return max(1, min(batch_size, int((budget - per_pass * unit) // (per_image * unit)))), params
