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
from .objects import Objects, find_objects, refuse_threshold
from .prompts import encode_prompts, prompt_pairs, similarities
from .precision import full_float32, in_float32
from .registry import get_method
from .scaling import minmax, minmax_tokens, screen
from .targets import resolve_targets
from .text import Text


def explain(model, x, method: str = "generic-attention", target=None, *, text=None, score_threshold=None,
            batch_size: int = 32, memory=None, normalize: bool = True, device=None, progress=False,
            **params) -> Explanation:
    """Explain ``model``'s predictions on ``x`` with ``method``.

    x: model input (B, 3, H, W) from ``model.preprocess`` (refused when not float or not finite; a warning when it
    looks like raw pixels), or images in any form ``preprocess`` takes (then ``exp.frames`` knows them); a region
    model's regions (B, R, width) from ``model.regions`` (then ``exp.maps`` is ``exp.token_maps``, (B, 1, R), one
    value per region, and ``exp.images`` is None).
    target: None (the predicted class), a class index or name for every image, or one per image.
    An image-text model's (CLIP-like) explanation explains similarities of (image, prompt) pairs (:mod:`vitx.prompts`):
    ``text`` holds the prompts (one or a list, shared by all images); target None explains every pair, image-major
    (``exp.pairs`` (rows, 2) names each row's image and prompt), a prompt's index or the prompt itself (one, or one
    per image) each image's pair with that prompt. ``exp.class_names`` are then the prompts, ``exp.targets`` each
    row's prompt and ``exp.logits`` (rows, prompts) its image's similarity with every prompt.
    A detector's (DETR-like) explanation has a map per object (:mod:`vitx.objects`), listed in ``exp.objects``:
    target None explains every detection, a query whose likeliest class is not "no object" and whose score (its
    likeliest object class's probability) is above ``score_threshold`` (default 0.5); query indices explain those
    queries of every image, class names the detections of those classes, and :class:`vitx.objects.Objects` found
    before (:func:`vitx.objects.find_objects` on the same images) are explained without detecting again. No detection
    gives an empty explanation with a warning.
    text: a bi-modal model's questions, one string per image, or an image-text model's prompts (words outside the
    model's vocabulary become its unknown token, with a warning naming them); the Explanation then holds
    ``text_maps`` and ``text_tokens``.
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
    frames, pixels = None, model.config.input == "pixels"
    if pixels and not (isinstance(x, torch.Tensor) and x.dim() == 4):
        x, frames = model.preprocess(x, frames=True)
    layout = model.layout(x)
    if frames is None and pixels:
        check_model_input(x, model.config.input_range)
    info.check_model(model, layout, params)
    if batch_size < 1:
        raise VitxError(f"batch_size must be at least 1, got {batch_size}")
    refuse_threshold(model, score_threshold)
    objects = pairs = None
    if model.image_text:
        encoded, prompts = encode_prompts(model, text)
        pairs = prompt_pairs(model, target, x.shape[0], prompts)
        with torch.inference_mode(False), evaluating(model), in_float32(model.net), full_float32():
            scores = similarities(model, x.to(model.device, torch.float32), encoded, batch_size)
        x, frames = x[pairs[:, 0].to(x.device)], frames and [frames[i] for i in pairs[:, 0].tolist()]
        encoded, targets = encoded.select(pairs[:, 1]), torch.zeros(len(pairs), dtype=torch.long, device=model.device)
    else:
        encoded = questions(model, text, x.shape[0])
    if model.detector:
        objects = find_objects(model, x, target, score_threshold, batch_size)
        x, frames = x[objects.image.to(x.device)], frames and [frames[i] for i in objects.image.tolist()]
        targets = objects.label.to(model.device)
    elif pairs is None:
        targets = resolve_targets(target, x.shape[0], model)
    with torch.inference_mode(False):
        x = x.to(model.device, torch.float32)
        exp = _explain(model, x.clone() if x.is_inference() else x, layout, info, params, targets, batch_size,
                       memory, normalize, progress, encoded, objects)
    exp.frames = frames
    if pairs is not None:   # a pair's logits: its image's similarity with every prompt; its target: its prompt
        exp.pairs, exp.class_names = pairs, prompts
        exp.targets, exp.logits = pairs[:, 1].to(exp.targets.device), scores[pairs[:, 0].to(scores.device)]
    return exp


def questions(model: Model, text, count: int) -> Text | None:
    """``text`` encoded for ``model`` (None for an image-only model), or a VitxError naming what is wrong."""
    if text is None:
        if model.bimodal:
            raise VitxError(f"this {model.config.kind!r} model answers questions about images: pass one question per "
                            "image as text=[...] (--text on the command line)")
        return None
    if not model.bimodal:
        raise VitxError(f"text was given (--text), and this {model.config.kind!r} model reads images only")
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, (list, tuple)) or not all(isinstance(q, str) for q in text):
        raise VitxError(f"text must be a string per image, got {type(text).__name__}")
    if len(text) != count:
        raise VitxError(f"got {len(text)} question{'s' * (len(text) != 1)} for {count} image{'s' * (count != 1)}: "
                        "give one question per image")
    return model.encode_text(text)


def _explain(model: Model, x: torch.Tensor, layout, info, params: dict, targets: torch.Tensor | None,
             batch_size: int, memory, normalize: bool, progress, text: Text | None = None,
             objects: Objects | None = None) -> Explanation:
    if any(p.is_inference() for p in model.parameters()):
        raise VitxError("this model's weights were made under torch.inference_mode(), so autograd cannot run "
                        "through them (vitx sizes its chunks by a forward pass with gradients, and gradient "
                        "methods need them); load or build the model outside inference_mode")
    method = info.name
    if objects is not None and not len(objects):
        return empty_explanation(model, x, layout, info, params, objects)
    out_maps, out_text, out_logits, out_targets, details = [], [], [], [], {}
    with evaluating(model), in_float32(model.net), full_float32(), torch.enable_grad():
        step, params = plan(info, params, model, x, batch_size, memory, text)
        chunks = range(0, x.shape[0], step)
        for start in tqdm(chunks, desc=method, disable=not progress or callable(progress), leave=False):
            end = start + step
            batch = Batch(model, x[start:end], layout, None if targets is None else targets[start:end],
                          None if text is None else text[start:end].to(model.device),
                          None if objects is None else objects.query[start:end].to(model.device))
            result = info.fn(batch, **params)
            if isinstance(result, dict):      # a bi-modal method: {"image": map, "text": (B, L)}
                out_text.append(result["text"].detach())
                result = result["image"]
            out_maps.append(result.detach())
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
    token_maps, pixels = None, model.config.input == "pixels"
    if info.output == "tokens":
        token_maps = maps
        if pixels:      # region models' maps stay per region, (B, 1, R)
            maps = F.interpolate(token_maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    if normalize:
        maps = minmax(maps)
        token_maps = None if token_maps is None else minmax(token_maps)
    text_maps = None
    if out_text:
        text_maps = torch.cat(out_text).float()
        text_maps = minmax_tokens(text_maps, text.mask.to(text_maps.device)) if normalize else text_maps
    return Explanation(maps=maps, token_maps=token_maps, targets=torch.cat(out_targets), logits=torch.cat(out_logits),
                       method=method, params=params, images=model.denormalize(x).cpu() if pixels else None,
                       class_names=model.config.class_names, details=details, degenerate=degenerate,
                       text_maps=text_maps, text_tokens=None if text is None else text.tokens,
                       objects=None if objects is None else objects.rows(model.config.class_names))


def empty_explanation(model: Model, x: torch.Tensor, layout, info, params: dict, objects: Objects) -> Explanation:
    """The explanation of no object: maps (0, H, W) (and token maps (0, gh, gw) for a token method), each tensor
    on the device and of the dtype an explanation of some objects has it."""
    tokens = x.new_zeros(0, *layout.grid) if info.output == "tokens" else None
    return Explanation(maps=x.new_zeros(0, *x.shape[-2:]), token_maps=tokens, targets=objects.label.to(x.device),
                       logits=x.new_zeros(0, model.config.num_classes + 1), method=info.name, params=params,
                       images=x.new_zeros(0, *x.shape[1:]).cpu(), class_names=model.config.class_names,
                       degenerate=torch.zeros(0, dtype=torch.bool, device=x.device), objects=[])
