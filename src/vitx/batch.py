"""What a method sees: one chunk of images, its token layout, its targets, and a way to run the model
under the tap."""
from __future__ import annotations

import torch

from .errors import VitxError
from .layout import TokenLayout
from .model import Model
from .prompts import pair_similarities
from .text import Text
from .trace import Trace, trace


class Batch:
    """Images ``x`` (B, 3, H, W, model-normalised) with targets (B,) or None for "the predicted class", and for a
    bi-modal model the questions beside them (``text``, one per image). For a detector each row is one object: its
    image, its class as the target, and its object query (``queries`` (B,)); :meth:`run` then gives the logits of
    each row's query, (B, classes + 1), so that methods see a detector's object as a classifier's image.

    The first :meth:`run` of the unmodified images fixes the default targets and the logits reported
    in the Explanation, so a method needs no extra forward pass to learn its targets.
    """

    def __init__(self, model: Model, x: torch.Tensor, layout: TokenLayout, targets: torch.Tensor | None,
                 text: Text | None = None, queries: torch.Tensor | None = None):
        self.model, self.x, self.layout, self.text, self.queries = model, x, layout, text, queries
        self._targets = targets
        self.logits: torch.Tensor | None = None
        self.details: dict[str, list] = {}   # per-image extras a method reports: {key: one entry per image}

    def run(self, x: torch.Tensor | None = None, *, text: Text | None = None, keep: torch.Tensor | None = None,
            original: bool | None = None, **tap) -> tuple[torch.Tensor, Trace]:
        """Forward ``x`` (default: the batch's own images) under the tap; ``tap`` goes to :func:`vitx.trace`.
        A bi-modal model reads ``text`` (default: the batch's own; copies of the batch stacked in ``x`` get it
        repeated) and keeps the image patches ``keep`` (B, k) (default: all).
        ``original=True`` says that ``x`` holds the batch's own images (e.g. a copy that requires grad).
        Returns (logits, trace)."""
        own = x is None and text is None and keep is None
        x = self.x if x is None else x
        if self.text is not None and text is None:
            text = self.text.repeat(x.shape[0] // len(self.text))
        with trace(self.model, **tap) as tr:
            if self.model.image_text and keep is None and not torch.is_grad_enabled() and plain(tap):
                logits = pair_similarities(self.model, x, text)     # each distinct image through its tower once
            else:
                logits = self.model(x) if text is None else self.model(x, text, keep)
        if self.queries is not None:
            queries = self.queries.repeat(x.shape[0] // len(self.queries))
            logits = logits[torch.arange(len(logits), device=logits.device), queries]
        if own if original is None else original:
            self.record(logits)
        return logits, tr

    def record(self, logits: torch.Tensor) -> None:
        """Keep the logits of the batch's unmodified images (B, classes), which fix the default targets, the first
        time they are computed: by :meth:`run`, or by a method that ran the model its own way."""
        if self.logits is None:
            self.logits = logits.detach()
            if self._targets is None:
                self._targets = self.logits.argmax(-1)

    def copies_per_pass(self, internal_batch_size: int) -> int:
        """How many stacked copies of the batch one pass takes: ``internal_batch_size`` images, at least one copy."""
        if internal_batch_size < 1:
            raise VitxError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
        return max(1, internal_batch_size // self.x.shape[0])

    def input_with_grad(self) -> torch.Tensor:
        """A copy of the images that requires grad, for gradients with respect to the input."""
        return self.x.detach().clone().requires_grad_(True)

    @property
    def targets(self) -> torch.Tensor:
        if self._targets is None:
            with torch.no_grad():
                self.run(attentions=False, tokens=False)
        return self._targets

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Sum over images of each image's target logit: its gradient gives every image its own gradient.
        ``logits`` may hold several copies of the batch stacked along dim 0."""
        targets = self.targets.repeat(logits.shape[0] // self.targets.shape[0])
        return logits.gather(1, targets[:, None]).sum()


def plain(tap: dict) -> bool:
    """The tap records nothing and edits nothing: a forward whose rows may share work."""
    return tap.get("attentions") is False and tap.get("tokens") is False and not tap.keys() - {"attentions", "tokens"}
