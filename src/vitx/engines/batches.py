"""One batch of a collection explained, as both engines do it (:mod:`.local` reads the pictures from their paths, the
Ray actors decode them from bytes): the batch preprocessed in one call (one picture at a time only when pixels are
refused, to find which), each method run once per target group, and every image or (image, method) that fails
recorded with its reason while the rest goes on."""
from __future__ import annotations

import torch

from ..errors import VitxError, one_line
from ..explain import explain
from ..model import Model
from ..viz.overlay import overlay_scale
from .collection import Item
from .rows import explanation_rows


def failure(item: Item, method: str | None, err: BaseException | str) -> dict:
    """An error row: ``item`` (every method when ``method`` is None) not explained, and why."""
    return {"key": item.key, "path": item.path, "method": method, "error": one_line(err)}


def explain_pictures(model: Model, entries: list, names: list[str], params: dict, target, resize: str = "stretch",
                     overlays: bool = False) -> tuple[list[dict], list[dict]]:
    """``entries``: ``(item, picture, methods it still needs)`` per image; ``params``: each method's bound parameters;
    ``target``: the class of the images without their own (None: the predicted one). Returns the rows
    (:func:`~vitx.engines.rows.explanation_rows`, in ``names``' order; with ``overlays``, each row's ``overlay``, a
    PIL image) and the failures (:func:`failure`): an item's target out of range, pixels refused, a method refusing."""
    classes, failures, good, pictures, todo = model.config.num_classes, [], [], [], []
    for item, picture, wanted in entries:
        if item.target is not None and not 0 <= item.target < classes:
            failures.append(failure(item, None, f"target {item.target} is out of range: this model has {classes} "
                                                f"classes (0-{classes - 1})"))
        else:
            good.append(item), pictures.append(picture), todo.append(set(wanted))
    inputs = _preprocess(model, good, pictures, todo, resize, failures)
    rows, scale = [], overlay_scale(model.config.image_size)
    for name in names:
        chosen = [i for i, wanted in enumerate(todo) if name in wanted]
        for group in target_groups(good, chosen, target):
            items = [good[i] for i in group]
            wanted = [item.target if item.target is not None else target for item in items]
            try:
                exp = explain(model, torch.cat([inputs[i] for i in group]), method=name,
                              target=None if wanted[0] is None else wanted, batch_size=len(group), **params[name])
            except VitxError as err:
                failures += [failure(item, name, err) for item in items]
                continue
            explained = explanation_rows(exp, items, params[name])
            for j, row in enumerate(explained if overlays else ()):
                row["overlay"] = exp.overlay(j, scale=scale)
            rows += explained
    return rows, failures


def _preprocess(model: Model, good: list[Item], pictures: list, todo: list[set], resize: str,
                failures: list[dict]) -> list[torch.Tensor]:
    """The pictures as (1, 3, H, W) inputs, in one call; when pixels are refused, one by one, the refused ones taken
    out of ``good`` and ``todo`` into ``failures``."""
    try:
        return list(model.preprocess(pictures, resize=resize)[:, None]) if pictures else []
    except VitxError:
        pass
    inputs, kept = [], []
    for item, picture, wanted in zip(good, pictures, todo):
        try:
            inputs.append(model.preprocess(picture, resize=resize))
            kept.append((item, wanted))
        except VitxError as err:
            failures.append(failure(item, None, err))
    good[:], todo[:] = [item for item, _ in kept], [wanted for _, wanted in kept]
    return inputs


def target_groups(items, chosen, target):
    """``chosen`` split into the items with a target (their own or ``target``) and those explained for their
    predicted class (explain takes one or the other per call)."""
    given = [i for i in chosen if items[i].target is not None or target is not None]
    return [group for group in (given, [i for i in chosen if i not in given]) if group]
