"""``vitx.explain``: the plumbing every method shares (batching, targets, device, upsampling, scaling)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batch import Batch
from .errors import VitxError
from .explanation import Explanation
from .images import check_model_input
from .memory import plan
from .model import Model, as_model, evaluating
from .precision import full_float32, in_float32
from .registry import get_method
from .scaling import minmax, screen
from .targets import resolve_targets


def explain(model, x, method: str = "generic-attention", target=None, *, batch_size: int = 32, memory=None,
            normalize: bool = True, device=None, progress=False, **params) -> Explanation:
    """Explain ``model``'s predictions on ``x`` with ``method``.

    x: model input (B, 3, H, W) from ``model.preprocess`` (refused when not float or not finite; a warning when it
    looks like raw pixels), or images in any form ``preprocess`` takes (then ``exp.frames`` knows them).
    target: None (the predicted class), a class index or name for every image, or one per image.
    batch_size: the most images per chunk. memory: the memory budget of a chunk (bytes or a size such as
    "4GB"; default half of what the model's device has available): chunks shrink below ``batch_size`` to fit
    the method's declared memory (:mod:`vitx.memory`), and a budget that cannot hold one image is refused before
    any work. normalize: min-max scale each map to [0, 1]. device: move the model there first. params: the
    method's own parameters (``vitx.methods()``). progress: True shows a bar over the chunks; a callable is
    called with each chunk's image count once done.

    Works on models with frozen parameters and inside ``torch.no_grad()`` or ``torch.inference_mode()``: the
    gradients a method takes are its own business, never the caller's mode's. A float16 or bfloat16 model is
    explained in float32 (:func:`vitx.precision.in_float32`, with a warning) and given back in its own dtype; on CUDA
    TF32 is off for the call (:func:`vitx.precision.full_float32`).
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
        check_model_input(x, model.config.input_range)
    info.check_model(model, layout, params)
    if batch_size < 1:
        raise VitxError(f"batch_size must be at least 1, got {batch_size}")
    with torch.inference_mode(False):
        x = x.to(model.device, torch.float32)
        exp = _explain(model, x.clone() if x.is_inference() else x, layout, info, params, target, batch_size,
                       memory, normalize, progress)
    exp.frames = frames
    return exp


def _explain(model: Model, x: torch.Tensor, layout, info, params: dict, target, batch_size: int, memory,
             normalize: bool, progress) -> Explanation:
    if any(p.is_inference() for p in model.parameters()):
        raise VitxError("this model's weights were made under torch.inference_mode(), so autograd cannot run "
                        "through them (vitx sizes its chunks by a forward pass with gradients, and gradient "
                        "methods need them); load or build the model outside inference_mode")
    method = info.name
    targets = resolve_targets(target, x.shape[0], model)
    out_maps, out_logits, out_targets, details = [], [], [], {}
    with evaluating(model), in_float32(model.net), full_float32(), torch.enable_grad():
        step, params = plan(info, params, model, x, batch_size, memory)
        chunks = range(0, x.shape[0], step)
        for start in tqdm(chunks, desc=method, disable=not progress or callable(progress), leave=False):
            end = start + step
            batch = Batch(model, x[start:end], layout, None if targets is None else targets[start:end])
            out_maps.append(info.fn(batch, **params).detach())
            if batch.logits is None:
                with torch.no_grad():
                    batch.run(attentions=False, tokens=False)
            out_logits.append(batch.logits)
            out_targets.append(batch.targets)
            for key, entries in batch.details.items():
                details.setdefault(key, []).extend(entries)
            if callable(progress):
                progress(batch.x.shape[0])
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
                       class_names=model.config.class_names, details=details, degenerate=degenerate)
