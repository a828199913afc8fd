"""Safetensors checkpoints with vitx's metadata (architecture, preprocessing, class names, metrics)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import VitxError

META_KEY = "vitx"


def save_checkpoint(net: nn.Module, path: str | Path, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def read_metadata(path: str | Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as err:
        raise VitxError(f"cannot read {str(path)!r} as a safetensors file ({err.__class__.__name__})") from None
    return json.loads(raw) if raw else {}


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state_dict, vitx metadata or {})."""
    meta = read_metadata(path)
    return load_file(str(path)), meta


def fingerprint(net: nn.Module) -> str:
    """A short hash of ``net``'s weights (every state_dict entry: name, dtype, shape and values): two networks
    share it exactly when they hold the same weights. Cached on ``net`` until any entry changes (in place
    too: tensors count their in-place changes)."""
    state = net.state_dict(keep_vars=True)
    key = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = net.__dict__.get("_vitx_fingerprint")
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()[:16]
    net.__dict__["_vitx_fingerprint"] = (key, value)
    return value
