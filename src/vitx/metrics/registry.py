"""The metric registry: one row per leaderboard score, saying which function computes it, from what, and
which direction is better. ``vitx.evaluate`` iterates it; :func:`compute` runs rows on given inputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import VitxError
from .localisation import (class_sensitivity, energy_pointing_game, pointing_game, pointing_game_tolerant,
                           relevance_rank_accuracy)
from .perturbation import insertion_deletion, perturbation_test
from .sanity import randomization
from .segmentation import segmentation
from .sparseness import sparseness

INPUTS = ("model", "x", "targets", "maps", "masks", "multi_masks", "method", "params")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Callable
    args: tuple[str, ...]           # the inputs fn takes, in order, named as in INPUTS
    output: str | None              # key of fn's dict result, or None when fn returns the (B,) scores
    higher_is_better: bool
    paper: str
    params: dict = field(default_factory=dict)

    @property
    def needs(self) -> frozenset[str]:
        """Beyond maps, x and targets: which of model, masks, multi_masks, method the metric needs."""
        return frozenset(self.args) & {"model", "masks", "multi_masks", "method"}

    def row(self) -> dict:
        return {"name": self.name, "function": self.fn.__name__, "params": dict(self.params),
                "output": self.output, "needs": sorted(self.needs), "higher_is_better": self.higher_is_better,
                "paper": self.paper}


def _rows(*rows: MetricInfo) -> dict[str, MetricInfo]:
    return {row.name: row for row in rows}


_PIX = ("maps", "masks")
_MODEL = ("model", "x", "targets", "maps")
_TOKENS = {"removal": "tokens"}
METRICS: dict[str, MetricInfo] = _rows(
    MetricInfo("perturbation_positive_auc", perturbation_test, _MODEL, "auc", False,
               "Chefer, Gur & Wolf, CVPR 2021", {"order": "positive"}),
    MetricInfo("perturbation_negative_auc", perturbation_test, _MODEL, "auc", True,
               "Chefer, Gur & Wolf, CVPR 2021", {"order": "negative"}),
    MetricInfo("perturbation_positive_auc_tokens", perturbation_test, _MODEL, "auc", False,
               "Chefer, Gur & Wolf, CVPR 2021, patch tokens dropped through the tap", _TOKENS | {"order": "positive"}),
    MetricInfo("perturbation_negative_auc_tokens", perturbation_test, _MODEL, "auc", True,
               "Chefer, Gur & Wolf, CVPR 2021, patch tokens dropped through the tap", _TOKENS | {"order": "negative"}),
    MetricInfo("insertion_auc", insertion_deletion, _MODEL, "insertion_auc", True, "Petsiuk, Das & Saenko, BMVC 2018"),
    MetricInfo("deletion_auc", insertion_deletion, _MODEL, "deletion_auc", False, "Petsiuk, Das & Saenko, BMVC 2018"),
    MetricInfo("pixel_accuracy", segmentation, _PIX, "pixel_accuracy", True, "Chefer, Gur & Wolf, CVPR 2021"),
    MetricInfo("miou", segmentation, _PIX, "miou", True, "Chefer, Gur & Wolf, CVPR 2021"),
    MetricInfo("map", segmentation, _PIX, "map", True, "Chefer, Gur & Wolf, CVPR 2021"),
    MetricInfo("pointing_game", pointing_game, _PIX, None, True, "Zhang et al., ECCV 2016 / IJCV 2018"),
    MetricInfo("pointing_game_tolerant", pointing_game_tolerant, _PIX, None, True,
               "Zhang et al., ECCV 2016 / IJCV 2018, with their 15-pixel tolerance at 224 pixels"),
    MetricInfo("energy_pointing_game", energy_pointing_game, _PIX, None, True, "Wang et al., CVPR-W 2020"),
    MetricInfo("relevance_rank_accuracy", relevance_rank_accuracy, _PIX, None, True,
               "Arras, Osman & Samek, Information Fusion 2022"),
    MetricInfo("class_sensitivity", class_sensitivity, ("maps", "multi_masks", "targets"), None, True,
               "vitx; after Rebuffi et al., CVPR 2020"),
    MetricInfo("randomization_spearman", randomization, ("model", "x", "targets", "method", "params"),
               "randomization_spearman", False, "Adebayo et al., NeurIPS 2018"),
    MetricInfo("sparseness", sparseness, ("maps",), None, True, "Chalasani et al., ICML 2020"),
)


def compute_rows(registry: dict[str, MetricInfo], names, inputs: dict, raw: dict | None, what: str) -> dict:
    """Scores {name: values} of the metrics ``names`` of ``registry`` (a benchmark's rows, named ``what`` in errors)
    from ``inputs``, each metric given what its row's ``args`` name; rows sharing a function and parameters share one
    call. ``raw`` receives each metric's whole result (curves too)."""
    results, cache = {}, {}
    for name in [names] if isinstance(names, str) else names:
        if name not in registry:
            raise VitxError(f"unknown metric {name!r} for {what}; metrics: {', '.join(registry)}")
        row = registry[name]
        key = (row.fn, tuple(sorted(row.params.items())))
        if key not in cache:
            cache[key] = row.fn(*(inputs[a] for a in row.args), **row.params)
        out = cache[key]
        results[name] = out if row.output is None else out[row.output]
        if raw is not None:
            raw[name] = out
    return results


def metrics() -> list[dict]:
    """The registry's rows as plain dicts."""
    return [row.row() for row in METRICS.values()]


def compute(names, raw: dict | None = None, **inputs) -> dict[str, torch.Tensor]:
    """Per-image scores {name: (B,)} of the metrics ``names`` (keys of :data:`METRICS`) from ``inputs``
    (model, x, targets, maps, masks, multi_masks, method, params; each metric takes what its row's
    ``args`` name). Rows sharing a function and parameters share one call (insertion and deletion,
    the three segmentation scores). ``raw``, a dict, receives each metric's whole result (curves too)."""
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        raise VitxError(f"unknown metric input {unknown[0]!r}; inputs: {', '.join(INPUTS)}")
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in METRICS:
            raise VitxError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
    results, cache = {}, {}
    for name in names:
        row = METRICS[name]
        missing = [a for a in row.args if inputs.get(a) is None and a != "params"]
        if missing:
            raise VitxError(f"metric {name!r} needs {', '.join(missing)}")
        key = (row.fn, tuple(sorted(row.params.items())))
        if key not in cache:
            cache[key] = row.fn(*(inputs.get(a) for a in row.args), **row.params)
        out = cache[key]
        results[name] = out if row.output is None else out[row.output]
        if raw is not None:
            raw[name] = out
    return results
