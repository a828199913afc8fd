"""``vitx.evaluate``: every method on the same shapes images, scored by every metric that applies (the
engine behind ``vitx bench``). A bi-modal model is scored on ``vitx.data.shapes_vqa`` pairs instead
(:mod:`vitx.evaluate_pairs`), an image-text model on ``vitx.data.shapes_captions`` images with prompts naming their
objects (:mod:`vitx.evaluate_prompts`).

The explained class is the true class of each object: on ``single`` data one explanation per image, on
``multi`` data one per present class, scored against that class's mask. Maps are scored as the methods
give them (``normalize=False``): the metrics handle sign and scale themselves. Two reference rows frame
the table: ``random`` (uniform noise, chance level) and ``ground-truth`` (the object's mask itself, an
oracle bound; benchmark-only, ``vitx explain`` never offers it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from .data.shapes import ShapesData
from .data.shapes_captions import ShapesCaptionData
from .data.shapes_vqa import ShapesVQAData
from .errors import VitxError, one_line
from .explain import explain
from .loading import load_model
from .objects import refuse_threshold
from .metrics import BIMODAL_METRICS, IMAGE_TEXT_METRICS, METRICS, OBJECT_METRICS, MetricInfo, compute
from .registry import get_method, method_names
from .scaling import minmax

REFERENCES = ("random", "ground-truth")
CURVES = {  # plotted curve -> (metric whose run gives it, key of the curve, key of its abscissae)
    "perturbation positive": ("perturbation_positive_auc", "correct", "fractions"),
    "perturbation negative": ("perturbation_negative_auc", "correct", "fractions"),
    "perturbation positive, tokens dropped": ("perturbation_positive_auc_tokens", "correct", "fractions"),
    "perturbation negative, tokens dropped": ("perturbation_negative_auc_tokens", "correct", "fractions"),
    "insertion": ("insertion_auc", "insertion", "fractions"),
    "deletion": ("deletion_auc", "deletion", "fractions"),
    "image perturbation positive": ("image_positive_auc", "correct", "fractions"),
    "image perturbation negative": ("image_negative_auc", "correct", "fractions"),
    "text perturbation positive": ("text_positive_auc", "correct", "fractions"),
    "text perturbation negative": ("text_negative_auc", "correct", "fractions"),
    "similarity, image tokens deleted": ("similarity_deletion_auc", "deletion", "fractions"),
    "similarity, image tokens inserted": ("similarity_insertion_auc", "insertion", "fractions"),
}
REGISTRIES = (METRICS, BIMODAL_METRICS, OBJECT_METRICS, IMAGE_TEXT_METRICS)   # every benchmark's metrics


def metric_info(name: str) -> MetricInfo:
    """The registry row of a metric of any benchmark (:data:`REGISTRIES`)."""
    return next(registry[name] for registry in REGISTRIES if name in registry)


@dataclass
class Evaluation:
    """``results``: the JSON-ready table ``{"model", "n", "seed", "data_seed", "variant", "explanations",
    "methods": {name: {metric: mean, metric_sem: standard error, seconds, images_per_second} or
    {"error": message}}}`` (``seconds``: the method's own time for all explanations);
    ``curves``: per method, the mean curves of :data:`CURVES` as ``{name: {"x": [...], "y": [...]}}``;
    ``gallery``: the first explanations' maps per method (min-max scaled), with ``images`` and
    ``targets`` they explain, named by ``class_names`` (on VQA pairs: the ground-truth answers, and ``questions``
    the questions asked); ``scores``: per method scored in this run (not one lent by ``previous``), each metric's
    per-explanation values ``{method: {metric: (n,) tensor}}`` on the CPU, NaN where undefined (what the collection
    bench stores per image)."""
    results: dict
    curves: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    gallery: dict = field(default_factory=dict)
    images: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    class_names: tuple = ()
    questions: tuple = ()


def evaluate(model, data: ShapesData | ShapesVQAData | ShapesCaptionData, methods="all", metrics=None, *,
             params: dict | None = None, batch_size: int = 32, seed: int = 0, device=None, gallery: int = 4,
             sanity_images: int | None = 100,
             score_threshold: float | None = None, previous: Evaluation | None = None, progress: bool = False,
             scored: Callable[[Evaluation], None] | None = None) -> Evaluation:
    """Run ``methods`` ("all": every registered method that applies to the model, plus the reference rows;
    or a list of names) on ``data`` and score each with ``metrics`` (None: every metric that applies to
    the data; class sensitivity needs ``multi`` data). ``params``: per-method parameters
    ``{method: {param: value}}``. A method that fails is recorded with its error and the run goes on.
    Metrics that re-run the method (the randomisation check explains the images once per randomised block)
    use the first ``sanity_images`` explanations only (None: all of them), which bounds their cost.
    The same ``seed`` (for stochastic methods, the random map and the randomisation check) gives the same
    numbers, method by method: ``previous``, an earlier evaluation (``vitx.bench.read``), lends its row and
    curves to every method it scored on the same images, seed, parameters and metrics, which then only
    redraws its gallery maps (a long run can go on where it stopped, or gain a method). ``scored`` is called
    with the evaluation so far after each method (``vitx bench`` saves its rows then).
    A bi-modal model takes ``vitx.data.shapes_vqa`` pairs (:func:`vitx.evaluate_pairs.evaluate_pairs`; no
    randomisation check there, so ``sanity_images`` does not apply), an image-text model
    ``vitx.data.shapes_captions`` images (:func:`vitx.evaluate_prompts.evaluate_prompts`, the same). A detector
    explains each detection with a score above ``score_threshold`` (default 0.5) on ``multi`` images, scored as weak
    segmentation of its object (:func:`vitx.evaluate_objects.evaluate_objects`; no randomisation check either)."""
    model = load_model(model, device=device)
    if model.detector:
        from .evaluate_objects import evaluate_objects  # it builds on this module's loop
        return evaluate_objects(model, data, methods, metrics, params=params, batch_size=batch_size, seed=seed,
                                gallery=gallery, score_threshold=score_threshold, previous=previous,
                                progress=progress, scored=scored)
    refuse_threshold(model, score_threshold)
    if model.image_text or isinstance(data, ShapesCaptionData):
        return _evaluate_prompts(model, data, methods, metrics, params=params, batch_size=batch_size, seed=seed,
                                 gallery=gallery, previous=previous, progress=progress, scored=scored)
    if isinstance(data, ShapesVQAData) and not model.bimodal:
        raise VitxError(f"vitx.data.shapes_vqa pairs are for bi-modal models, and this {model.config.kind!r} model "
                        "reads images only: evaluate it on vitx.data.shapes(...) images")
    if model.bimodal:
        if not isinstance(data, ShapesVQAData):
            raise VitxError(f"this {model.config.kind!r} model answers questions about images: evaluate it on "
                            f"vitx.data.shapes_vqa(...) pairs, got {type(data).__name__}")
        from .evaluate_pairs import evaluate_pairs  # it builds on this module's loop
        return evaluate_pairs(model, data, methods, metrics, params=params, batch_size=batch_size, seed=seed,
                              gallery=gallery, previous=previous, progress=progress, scored=scored)
    if not isinstance(data, ShapesData):
        raise VitxError(f"data must be vitx.data.shapes(...) data with masks, got {type(data).__name__}")
    if len(data.class_names) != model.config.num_classes:
        raise VitxError(f"the data has {len(data.class_names)} classes and the model "
                        f"{model.config.num_classes}: evaluate a model trained on this data")
    if sanity_images is not None and sanity_images < 1:
        raise VitxError(f"sanity_images must be at least 1 (or None for all), got {sanity_images}")
    names, metric_names, params = checked_run(model, data, methods, metrics, params, batch_size)

    x, targets, masks, multi_masks = _explanations(model, data)
    sanity = len(targets) if sanity_images is None else min(sanity_images, len(targets))
    results = {"model": model.config.name or type(model.net).__name__, "n": len(data), "seed": seed,
               "data_seed": data.seed, "variant": data.variant, "explanations": len(targets),
               "sanity_explanations": sanity, "methods": {}}
    evaluation = Evaluation(results, images=model.denormalize(x[:gallery]).cpu(), targets=targets[:gallery].cpu(),
                            class_names=data.class_names)

    def explained(name: str, settings: dict, count: int) -> dict:
        return {"maps": _maps(model, x[:count], targets[:count], masks[:count], name, settings, batch_size, seed)}

    def scored_maps(name: str, settings: dict, maps: dict, group: list[str]) -> tuple[dict, dict]:
        raw = {}
        count = sanity if "method" in METRICS[group[0]].needs else len(targets)
        return compute(group, raw=raw, model=model, x=x[:count], targets=targets[:count], maps=maps["maps"],
                       masks=masks, multi_masks=multi_masks, method=name, params=settings), raw

    score_methods(evaluation, model, names, metric_names, params, len(targets), gallery, seed, explained, scored_maps,
                  previous, progress, scored)
    return evaluation


def score_methods(evaluation: Evaluation, model, names: list[str], metric_names: list[str], params: dict, count: int,
                  gallery: int, seed: int, explained: Callable, score: Callable, previous: Evaluation | None,
                  progress: bool, scored: Callable | None) -> None:
    """The loop both benchmarks share: per method, its maps (``explained(name, settings, count)`` -> a dict with at
    least "maps", the pixel maps of the first ``count`` explanations), timed, then its scores group by group
    (``score(name, settings, maps, group)`` -> (per-explanation scores, raw results)); a row reused from
    ``previous`` only redraws its gallery; a failure is recorded and the run goes on; ``scored`` after each."""
    results = evaluation.results
    for name in names:
        wanted = [m for m in metric_names if not (name in REFERENCES and "method" in metric_info(m).needs)]
        settings = params.get(name, {})
        earlier = _reusable(previous, results, name, settings, wanted)
        if earlier is not None:
            results["methods"][name], evaluation.curves[name] = earlier
            evaluation.gallery[name] = minmax(explained(name, settings, gallery)["maps"]).cpu()
            if scored is not None:
                scored(evaluation)
            continue
        groups = _groups(wanted)
        with tqdm(total=1 + len(groups), desc=name, disable=not progress, leave=False) as bar:
            try:
                with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    start = time.perf_counter()
                    maps = explained(name, settings, count)
                    seconds = time.perf_counter() - start
                    bar.update()
                    scores, raw = {}, {}
                    for group in groups:
                        values, out = score(name, settings, maps, group)
                        scores.update(values)
                        raw.update(out)
                        bar.update()
            except Exception as err:  # a failing method is reported and the run goes on
                results["methods"][name] = {"error": one_line(err)}
                continue
        row = {"params": settings}
        for metric, values in scores.items():
            row[metric], row[f"{metric}_sem"] = _mean_sem(values)
        row["seconds"] = round(seconds, 4)
        row["images_per_second"] = round(count / seconds, 2) if seconds > 0 else None
        results["methods"][name] = row
        evaluation.curves[name] = _curves(raw)
        evaluation.scores[name] = {metric: values.detach().cpu() for metric, values in scores.items()}
        evaluation.gallery[name] = minmax(maps["maps"][:gallery]).cpu()
        if scored is not None:
            scored(evaluation)


def checked_run(model, data, methods, metrics, params: dict | None, batch_size: int) -> tuple[list, list, dict]:
    """(method names, metric names, parameters) of a run of ``model`` on ``data``, each checked before any work."""
    if tuple(data.images.shape[-2:]) != model.config.image_size:
        raise VitxError(f"the data's {tuple(data.images.shape[-2:])} images do not fit the model's "
                        f"{model.config.image_size} input: draw them with image_size={model.config.image_size[0]}")
    if batch_size < 1:
        raise VitxError(f"batch_size must be at least 1, got {batch_size}")
    names = method_list(model, data, methods, params)
    metric_names = metric_list(data, metrics, model.detector)
    for name in params or {}:
        if name not in names:
            raise VitxError(f"parameters given for {name!r}, which is not among the methods evaluated")
    return names, metric_names, params or {}


def method_list(model, data: ShapesData, methods, params: dict | None = None) -> list[str]:
    """The method names to run: "all" or the names given, each checked to exist and apply to ``model``
    (with its ``params`` ``{method: {param: value}}``)."""
    layout = model.layout(data.images[:1])
    if methods == "all":
        usable = []
        for name in method_names():
            try:
                get_method(name).check(model.config, layout, (params or {}).get(name))
                usable.append(name)
            except VitxError:
                pass
        return usable + list(REFERENCES)
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise VitxError("no methods to evaluate")
    for name in names:
        if name not in REFERENCES:
            get_method(name).check(model.config, layout, (params or {}).get(name))  # say so before running
    return list(dict.fromkeys(names))


def metric_list(data: ShapesData | ShapesVQAData | ShapesCaptionData, metrics, detector: bool = False) -> list[str]:
    """The metric names to compute: None (every one that applies to ``data``, or to a ``detector``'s objects) or the
    names given, checked."""
    if isinstance(data, (ShapesVQAData, ShapesCaptionData)) or detector:
        registry, what = ((OBJECT_METRICS, "detectors") if detector else
                          (IMAGE_TEXT_METRICS, "(image, prompt) pairs") if isinstance(data, ShapesCaptionData) else
                          (BIMODAL_METRICS, "(image, question) pairs"))
        names = list(registry) if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
        for name in names:
            if name not in registry:
                raise VitxError(f"unknown metric {name!r} for {what}; metrics: {', '.join(registry)}")
        return list(dict.fromkeys(names))
    if metrics is None:
        return [m for m, info in METRICS.items() if data.variant == "multi" or "multi_masks" not in info.needs]
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    for name in names:
        if name not in METRICS:
            raise VitxError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
        if data.variant == "single" and "multi_masks" in METRICS[name].needs:
            raise VitxError(f"metric {name!r} needs multi-object data (variant='multi')")
    return list(dict.fromkeys(names))


def _evaluate_prompts(model, data, methods, metrics, **options) -> Evaluation:
    """An image-text model on ``vitx.data.shapes_captions`` images, each refused in one line with the other."""
    if not model.image_text:
        raise VitxError(f"vitx.data.shapes_captions images are for image-text models, and this {model.config.kind!r} "
                        "model does not score (image, prompt) pairs")
    if not isinstance(data, ShapesCaptionData):
        raise VitxError(f"this {model.config.kind!r} model scores (image, prompt) pairs: evaluate it on "
                        f"vitx.data.shapes_captions(...) images, got {type(data).__name__}")
    from .evaluate_prompts import evaluate_prompts  # it builds on this module's loop
    return evaluate_prompts(model, data, methods, metrics, **options)


def _groups(names: list[str]) -> list[list[str]]:
    """Metrics grouped by the run that computes them (insertion and deletion share one, for example)."""
    groups: dict = {}
    for name in names:
        info = metric_info(name)
        groups.setdefault((info.fn, tuple(sorted(info.params.items()))), []).append(name)
    return list(groups.values())


def _explanations(model, data: ShapesData):
    """Model input, explained class, its mask and (multi) every class's mask, one row per explanation."""
    x = model.normalize(data.images.to(model.device))
    if data.variant == "single":
        return x, data.labels.to(model.device), data.masks.to(model.device), None
    image, target = torch.nonzero(data.labels, as_tuple=True)
    masks = data.masks.to(model.device)
    return x[image.to(model.device)], target.to(model.device), masks[image, target], masks[image]


def _maps(model, x, targets, masks, name: str, params: dict, batch_size: int, seed: int) -> torch.Tensor:
    if name == "random":
        noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(seed))
        return noise.to(x.device)
    if name == "ground-truth":
        return masks.float()
    return explain(model, x, name, target=targets, batch_size=batch_size, normalize=False, **params).maps


_SAME_RUN = ("model", "n", "seed", "data_seed", "variant", "explanations", "sanity_explanations", "score_threshold",
             "match_iou", "upsample")


def _reusable(previous: Evaluation | None, results: dict, name: str, settings: dict, metrics: list[str]):
    """(row, curves) of ``name`` from ``previous`` when it scored the same images with the same seed,
    parameters and metrics without failing; else None."""
    if previous is None or any(previous.results.get(key) != results.get(key) for key in _SAME_RUN):
        return None
    row = previous.results.get("methods", {}).get(name)
    if row is None or "error" in row or row.get("params") != settings or name not in previous.curves:
        return None
    if set(metrics) != {key for key in row if any(key in registry for registry in REGISTRIES)}:
        return None
    return row, previous.curves[name]


def _mean_sem(values: torch.Tensor) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean over the finite values (NaN marks 'undefined for this image')."""
    values = values.double()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None, None
    sem = values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else None
    return values.mean().item(), sem


def _curves(raw: dict) -> dict:
    curves = {}
    for title, (metric, key, x) in CURVES.items():
        if metric in raw:
            curves[title] = {"x": raw[metric][x].tolist(), "y": raw[metric][key].double().mean(0).tolist()}
    return curves


__all__ = ["CURVES", "Evaluation", "REFERENCES", "REGISTRIES", "checked_run", "evaluate", "method_list", "metric_info",
           "metric_list", "score_methods"]
