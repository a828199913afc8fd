"""Safetensors checkpoints with vitx's metadata (architecture, preprocessing, class names, metrics)."""
from __future__ import annotations

import hashlib
import json
import re
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


def state_dict_error(err: Exception) -> str:
    """One line for an error of ``load_state_dict``: every shape mismatch (file vs model), missing and
    unexpected key, with keys that differ only in a block index merged (``blocks.*.attn.qkv.weight ×12``);
    other errors: their first line."""
    text = str(err)
    found = {"shapes differ": [], "missing": [], "unexpected": []}
    for line in text.splitlines():
        if match := re.search(r"size mismatch for (\S+): copying a param with shape torch.Size\(\[(.*?)\]\) "
                              r"from checkpoint, the shape in current model is torch.Size\(\[(.*?)\]\)", line):
            key, theirs, ours = match.groups()
            found["shapes differ"].append(f"{key} ({_dims(theirs)} in the file, {_dims(ours)} in the model)")
        elif match := re.search(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)", line):
            found[match.group(1).lower()].extend(re.findall(r'"([^"]+)"', match.group(2)))
    parts = [f"{what}: {', '.join(_merge(items))}" for what, items in found.items() if items]
    return "; ".join(parts) if parts else (text.splitlines()[0] if text else type(err).__name__)


def _dims(sizes: str) -> str:
    return "x".join(s.strip() for s in sizes.split(",")) or "scalar"


def _merge(items: list[str]) -> list[str]:
    """Items that differ only in numeric path segments, once each with their count."""
    counts: dict[str, int] = {}
    for item in items:
        pattern = re.sub(r"(?<=\.)\d+(?=\.)", "*", item)
        counts[pattern] = counts.get(pattern, 0) + 1
    return [f"{item} ×{n}" if n > 1 else item for item, n in counts.items()]
