"""Safetensors checkpoints with vitx's metadata (architecture, preprocessing, class names, metrics)."""
from __future__ import annotations

import json
from pathlib import Path

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
