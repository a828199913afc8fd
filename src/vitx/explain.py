"""``vitx.explain``: the plumbing every method shares (batching, targets, device, upsampling, scaling)."""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batch import Batch
from .errors import VitxError
from .explanation import Explanation
from .images import check_model_input
from .model import Model, as_model, evaluating
from .registry import get_method
from .scaling import minmax, screen


def explain(model, x, method: str = "generic-attention", target=None, *, batch_size: int = 32,
            normalize: bool = True, device=None, progress: bool = False, **params) -> Explanation:
    """Explain ``model``'s predictions on ``x`` with ``method``.

    x: model input (B, 3, H, W) from ``model.preprocess`` (refused when not float or not finite; a warning when it
    looks like raw pixels), or images in any form ``preprocess`` takes (then ``exp.frames`` knows them).
    target: None (the predicted class), a class index or name for every image, or one per image.
    batch_size: images per chunk, to bound memory. normalize: min-max scale each map to [0, 1].
    device: move the model there first. params: the method's own parameters (``vitx.methods()``).
    """
    model = as_model(model)
    if device is not None:
        model = model.to(device)
    info = get_method(method)
    params = info.bind(params)
    frames = None
    if not (isinstance(x, torch.Tensor) and x.dim() == 4):
        x, frames = model.preprocess(x, frames=True)
    layout = model.layout(x)
    if frames is None:
        check_model_input(x, model.config.mean, model.config.std)
    info.check(model.config, layout, params)
    if batch_size < 1:
        raise VitxError(f"batch_size must be at least 1, got {batch_size}")
    x = x.to(model.device, torch.float32)
    targets = resolve_targets(target, x.shape[0], model)
    out_maps, out_logits, out_targets, details = [], [], [], {}
    chunks = range(0, x.shape[0], batch_size)
    with evaluating(model), torch.enable_grad():
        for start in tqdm(chunks, desc=method, disable=not progress, leave=False):
            end = start + batch_size
            batch = Batch(model, x[start:end], layout, None if targets is None else targets[start:end])
            out_maps.append(info.fn(batch, **params).detach())
            if batch.logits is None:
                with torch.no_grad():
                    batch.run(attentions=False, tokens=False)
            out_logits.append(batch.logits)
            out_targets.append(batch.targets)
            for key, entries in batch.details.items():
                details.setdefault(key, []).extend(entries)
    maps, degenerate = screen(torch.cat(out_maps).float())   # flagged before scaling, which would hide them
    token_maps = None
    if info.output == "tokens":
        token_maps = maps
        maps = F.interpolate(token_maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    if normalize:
        maps = minmax(maps)
        token_maps = None if token_maps is None else minmax(token_maps)
    return Explanation(maps=maps, token_maps=token_maps, targets=torch.cat(out_targets), logits=torch.cat(out_logits),
                       method=method, params=params, images=model.denormalize(x).cpu(),
                       class_names=model.config.class_names, details=details, degenerate=degenerate, frames=frames)


def resolve_targets(target, count: int, model: Model) -> torch.Tensor | None:
    """None, or (count,) class indices on the model's device. ``target`` is one class for every image (an
    index of any integer type, a 0-dim tensor or array, or a name) or a sequence, tensor or array of
    ``count``; names, types and ranges are checked."""
    if target is None:
        return None
    if isinstance(target, (torch.Tensor, np.ndarray)):
        target = target.tolist()  # a 0-dim tensor or array becomes a Python scalar
    values = list(target) if isinstance(target, (list, tuple)) else [target] * count
    if len(values) != count:
        raise VitxError(f"got {len(values)} targets for {count} images")
    names, num_classes = model.config.class_names, model.config.num_classes
    indices = []
    for value in values:
        if isinstance(value, str):
            if value not in names:
                raise VitxError(f"unknown target class {value!r}; classes: {', '.join(names[:20])}")
            value = names.index(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise VitxError(f"a target must be a class index or name, got {value!r}")
        if not 0 <= value < num_classes:
            raise VitxError(f"target class {value} is out of range: this model has {num_classes} "
                            f"classes (0-{num_classes - 1})")
        indices.append(int(value))
    return torch.tensor(indices, device=model.device)
