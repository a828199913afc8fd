"""Memory budgets for ``explain()``: how much a method keeps per image on a model, and how much there is.

The unit is the model's **graph**: the bytes autograd keeps for one image's forward pass under the tap with
gradients on (every tensor saved for the backward, each storage counted once), measured once per model and
input size by a one-image probe (:func:`graph_bytes`). A method declares its memory in graphs with
``register(..., memory=fn)``, ``fn(params) -> (per_image, per_pass)``: ``per_image`` graphs for every image of a
chunk and ``per_pass`` graphs whatever the chunk's size (the stacked copies of methods that run
``internal_batch_size`` images a pass). A forward pass without gradients keeps a fraction of a graph
(:data:`FORWARD`). ``benchmarks/memory.py`` measures every method's peak against its declaration.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import VitxError

FORWARD = 0.25       # a forward pass without gradients: one block's transients and what the method records
HEAD_ROOM = 0.5      # the default budget: this share of the memory available when explain() starts
GRAPH = (1.0, 0.0)   # one graph per image: a forward with gradients and its backward


def forward_only(params: dict) -> tuple[float, float]:
    """A method that runs the model without gradients: a fraction of a graph per image."""
    return FORWARD, 0.0


def one_graph(params: dict) -> tuple[float, float]:
    """A method that differentiates one forward pass of its images."""
    return GRAPH


def stacked(per_copy: float):
    """A method that stacks ``internal_batch_size`` perturbed copies a pass, each keeping ``per_copy`` graphs
    (``FORWARD`` without gradients), on top of one graph per image for its first, plain pass."""
    def memory(params: dict) -> tuple[float, float]:
        return max(per_copy, FORWARD), per_copy * params["internal_batch_size"]
    return memory


def graph_bytes(model, x: torch.Tensor) -> int:
    """Bytes autograd keeps for one image's forward under the tap (``x``: one (1, 3, H, W) model input).
    Cached on the model per input size, dtype and device."""
    from .trace import trace
    key = (tuple(x.shape[1:]), x.dtype, str(x.device))
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
            model(x)
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


def chunk_size(method, params: dict, model, x: torch.Tensor, batch_size: int, memory) -> int:
    """The most images a chunk of ``method`` may hold within the budget ``memory`` (bytes, a size string, or
    None: :data:`HEAD_ROOM` of what is available on the model's device), at most ``batch_size``. A
    VitxError before any work when one image does not fit."""
    per_image, per_pass = method.memory(params)
    budget = parse_size(memory) if memory is not None else int(HEAD_ROOM * available_bytes(x.device))
    unit = graph_bytes(model, x[:1].clone())
    needed = (per_image + per_pass) * unit
    if needed > budget:
        raise VitxError(f"method {method.name!r} needs about {megabytes(needed)} for one image on this model, "
                        f"more than the memory budget of {megabytes(budget)}; raise memory= (--memory)"
                        + (" or lower internal_batch_size" if "internal_batch_size" in params else ""))
    return max(1, min(batch_size, int((budget - per_pass * unit) // (per_image * unit))))
