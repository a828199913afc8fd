"""Row labels of a grid: the image's name, what the model predicts with its probabilities, and the explained class;
for a bi-modal model the question and the answer."""
from __future__ import annotations

from typing import Callable

import torch

THRESHOLD = 0.5  # a multi-label model predicts every class whose sigmoid probability reaches this


def probability(p: float) -> str:
    """A probability with its significant digits: 0.987, 0.0012, 3.4e-07 (never a rounded 0%)."""
    return f"{p:.3f}" if p >= 0.01 else f"{p:.2g}"


def prediction_label(name: str, logits: torch.Tensor, class_name: Callable[[int], str], *, multi_label: bool = False,
                     target: int | None = None, question: str | None = None) -> str:
    """``name``, then the predicted class with its softmax probability, or for a multi-label model every class
    whose sigmoid probability reaches :data:`THRESHOLD` (the most probable one when none does), then the explained
    ``target`` class with its probability when one was chosen. With a bi-modal model's ``question``: ``name``,
    ``Q: <question>`` and :func:`answer_lines`."""
    if question is not None:
        return "\n".join([name, f"Q: {question}", *answer_lines(logits, class_name, target)])
    logits = logits.detach().float().cpu()
    probs = logits.sigmoid() if multi_label else logits.softmax(-1)
    lines = [name]
    if multi_label:
        over = [int(k) for k in probs.argsort(descending=True) if probs[k] >= THRESHOLD]
        if over:
            lines.append(f"predicted (p ≥ {THRESHOLD}):")
            lines += [f"{class_name(k)} ({probability(float(probs[k]))})" for k in over]
        else:
            k = int(probs.argmax())
            lines.append(f"predicted: none ≥ {THRESHOLD}; top: {class_name(k)} ({probability(float(probs[k]))})")
    else:
        k = int(probs.argmax())
        lines.append(f"predicted: {class_name(k)} ({probability(float(probs[k]))})")
    if target is not None:
        lines.append(f"target: {class_name(target)} ({probability(float(probs[target]))})")
    return "\n".join(lines)


def answer_lines(logits: torch.Tensor, class_name: Callable[[int], str], target: int | None = None) -> list[str]:
    """A question's predicted answer with its softmax probability, ``answer: red (0.512)``; then, where ``target``
    is another answer, the one explained: ``explained: yes (0.013)``."""
    probs = logits.detach().float().cpu().softmax(-1)
    k = int(probs.argmax())
    lines = [f"answer: {class_name(k)} ({probability(float(probs[k]))})"]
    if target is not None and int(target) != k:
        lines.append(f"explained: {class_name(int(target))} ({probability(float(probs[int(target)]))})")
    return lines
