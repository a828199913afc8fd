"""What an explanation of a detector explains: its objects. A DETR-like detector answers with a class (or "no
object", its last class) and a box per object query; :func:`find_objects` picks the (image, query) pairs to explain
and the class to explain each for, and :func:`vitx.explain` then explains every object as one row of a batch."""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, fields

import torch

from .errors import VitxError
from .model import Model, evaluating
from .precision import full_float32, in_float32
from .registry import within
from .targets import ClassNames

DEFAULT_THRESHOLD = 0.5   # Chefer et al.'s DETR segmentation keeps the queries whose best class has p > 0.5


@dataclass(frozen=True)
class Objects:
    """Per explained object: its image (index into the batch), query, class index, score (the class's softmax
    probability) and box (x0, y0, x1, y1) in pixels of the model's input."""
    image: torch.Tensor
    query: torch.Tensor
    label: torch.Tensor
    score: torch.Tensor
    box: torch.Tensor

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, rows) -> "Objects":
        """The objects of ``rows`` (a slice or indices)."""
        return Objects(*(getattr(self, f.name)[rows] for f in fields(self)))

    def rows(self, class_names) -> list[dict]:
        """One dict per object: image, query, class (name), label (index), score, box."""
        return [{"image": i, "query": q, "class": class_names[c] if c < len(class_names) else str(c), "label": c,
                 "score": round(s, 4), "box": [round(v, 2) for v in box]}
                for i, q, c, s, box in zip(self.image.tolist(), self.query.tolist(), self.label.tolist(),
                                           self.score.tolist(), self.box.tolist())]


def detect(model: Model, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, queries, classes + 1) and pixel boxes (N, queries, 4) (x0, y0, x1, y1) of images x,
    found as :func:`vitx.explain` runs the model: in eval mode and in full float32 (a half-precision model's weights
    converted for the call, without a warning: the explanation gives it), so the objects are the ones explained.
    Outside any caller's inference mode, where the converted weights would come back as inference tensors."""
    probs, boxes = [], []
    with torch.inference_mode(False), torch.no_grad(), evaluating(model), in_float32(model.net, warn=False), \
            full_float32():
        for start in range(0, x.shape[0], batch_size):
            logits, cxcywh = model.detect(x[start:start + batch_size].to(model.device, torch.float32))
            probs.append(logits.float().softmax(-1))
            boxes.append(pixel_boxes(cxcywh, x.shape[-2:]))
    return torch.cat(probs), torch.cat(boxes)


def pixel_boxes(cxcywh: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes (..., 4) given as (cx, cy, w, h) fractions of an image of ``size`` (height, width) as float32 pixel
    boxes (x0, y0, x1, y1)."""
    centre, extent = cxcywh[..., :2].float(), cxcywh[..., 2:].float()
    scale = torch.tensor([size[1], size[0]] * 2, device=cxcywh.device, dtype=torch.float32)
    return torch.cat([centre - extent / 2, centre + extent / 2], -1) * scale


def refuse_threshold(model: Model, score_threshold, option: str = "score_threshold") -> None:
    """Refuse a score threshold given for a model that is not a detector: it picks a detector's objects only."""
    if score_threshold is not None and not model.detector:
        raise VitxError(f"{option} picks a detector's objects, and this {model.config.kind!r} model is not a detector")


def find_objects(model: Model, x: torch.Tensor, target, threshold: float | None, batch_size: int) -> Objects:
    """The objects to explain in images x. ``target``: None, every detection (a query whose likeliest class is an
    object class, with probability above ``threshold``); query indices (an int or a list of ints), those queries of
    every image, each for its likeliest object class whatever its score; class names (a str or a list of str), the
    detections of those classes; ``Objects`` found before (by this function, on the same images), taken as they are
    without running the detector again. An empty result comes with a warning."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not within(threshold, "[0, 1]"):
        raise VitxError(f"score_threshold must be a number in [0, 1], got {threshold!r}")
    if isinstance(target, Objects):
        if len(target) and int(target.image.max()) >= x.shape[0]:
            raise VitxError(f"the objects given as target lie in image {int(target.image.max())}, and there are "
                            f"{x.shape[0]} images")
        return target
    probs, boxes = detect(model, x, batch_size)
    queries = probs.shape[1]
    score, label = probs[..., :-1].max(-1)                          # (N, Q): the likeliest object class
    chosen = (score > threshold) & (probs.argmax(-1) != probs.shape[-1] - 1)
    values = [] if target is None else list(target) if isinstance(target, (list, tuple)) else [target]
    if isinstance(target, torch.Tensor):
        values = target.flatten().tolist()
    if target is not None and not values:
        raise VitxError("target is an empty list: give query indices or class names, or None for every detection")
    if all(isinstance(v, str) for v in values) and values:
        names = ClassNames(model.config.class_names)
        wanted = torch.tensor(sorted({names.lookup(v) for v in values}), device=label.device)
        chosen &= torch.isin(label, wanted)
    elif values:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise VitxError(f"a detector's target is a query index or a class name (not both), got {v!r}")
            if not 0 <= v < queries:
                raise VitxError(f"target query {v} is out of range: this detector has {queries} queries "
                                f"(0-{queries - 1})")
        chosen = torch.zeros_like(chosen)
        chosen[:, sorted(set(int(v) for v in values))] = True
    image, query = chosen.nonzero(as_tuple=True)
    if not len(image):
        warnings.warn(f"no detection with a score above {threshold:g} in {x.shape[0]} image(s): nothing to explain",
                      stacklevel=3)
    return Objects(image.cpu(), query.cpu(), label[image, query].cpu(), score[image, query].cpu(),
                   boxes[image, query].cpu())
