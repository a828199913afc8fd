"""The classes to explain: ``target=`` of :func:`vitx.explain` and ``--target`` of the CLI, read as class indices."""
from __future__ import annotations

import numbers
import re

import numpy as np
import torch

from .errors import VitxError

_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def resolve_targets(target, count: int, model, classes: tuple[str, ...] | None = None,
                    noun: str = "class") -> torch.Tensor | None:
    """None, or (count,) class indices on the model's device. ``target`` is one class for every image or a
    sequence, tensor or array of ``count``. A class is an index (any integer type, or a whole-valued float or
    string: 2, 2.0, "2", "2.0") or a name, case-insensitive: the class's whole name or any of its
    comma-separated synonyms ("tench" for "tench, Tinca tinca"). Types, ranges and ambiguous names are refused.
    ``classes`` (named ``noun`` in errors) stand for the model's own, e.g. an image-text model's prompts."""
    if target is None:
        return None
    if isinstance(target, (torch.Tensor, np.ndarray)):
        target = target.tolist()  # a 0-dim tensor or array becomes a Python scalar
    values = list(target) if isinstance(target, (list, tuple)) else [target] * count
    if len(values) != count:
        raise VitxError(f"got {len(values)} targets for {count} images")
    own = classes is None
    names = ClassNames(model.config.class_names if own else classes)
    known = model.config.num_classes if own else len(classes)
    has = f"this model has {known} classes" if own else f"{known} {noun}{'s' * (known != 1)} given"
    indices = [_index(value, names) for value in values]
    for index in indices:
        if not 0 <= index < known:
            raise VitxError(f"target {noun} {index} is out of range: {has} (0-{known - 1})")
    return torch.tensor(indices, device=model.device)


def _index(value, names: "ClassNames") -> int:
    if isinstance(value, str):
        return names.lookup(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise VitxError(f"a target must be a class index or name, got {value!r}")
    if value != int(value):
        raise VitxError(f"a target class index must be a whole number, got {value!r}")
    return int(value)


class ClassNames:
    """A model's class names, looked up by whole name or synonym, case-insensitively."""

    def __init__(self, class_names):
        self.names = tuple(class_names)
        self.whole, self.synonyms = {}, {}
        for i, name in enumerate(self.names):
            self.whole.setdefault(name.casefold().strip(), []).append(i)
            for synonym in dict.fromkeys(part.casefold().strip() for part in name.split(",")):
                if synonym:
                    self.synonyms.setdefault(synonym, []).append(i)

    def lookup(self, text: str) -> int:
        key = text.casefold().strip()
        if _NUMBER.fullmatch(key):
            index = _index(float(key), self)
            named = self.whole.get(key, [index])
            if named != [index]:
                raise VitxError(f"target {text!r} is ambiguous: class {index} or the class named {text!r} "
                                f"({self._describe(named)}); pass an int for the index")
            return index
        found = self.whole.get(key) or self.synonyms.get(key)
        if not found:
            shown = ", ".join(repr(name) for name in self.names[:20]) + (", ..." if len(self.names) > 20 else "")
            raise VitxError(f"unknown target class {text!r}; classes: {shown}")
        if len(found) > 1:
            raise VitxError(f"target {text!r} is ambiguous: it names {self._describe(found)}; "
                            "give the whole name or the index")
        return found[0]

    def _describe(self, indices: list[int]) -> str:
        return " and ".join(f"{i} ({self.names[i]!r})" for i in indices)
