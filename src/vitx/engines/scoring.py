"""The collection benchmark in this process: each method of ``vitx.evaluate`` scored on a collection whose images
have labels and masks, one shard at a time, streamed in chunks, every (image, method) pair's per-image scores
written as it is done (:mod:`.scores`), resumable.

Each chunk of ``batch_size`` images is decoded (an unreadable image or mask becomes an errors-table row and the run
goes on), fitted to the model's size (masks by nearest neighbour; a mask pixel above half of full scale is the
object), and scored by :func:`vitx.evaluate` on exactly those images, so an image's scores are those of the
in-memory benchmark. Left out: the randomisation check (it re-explains every image once per randomised block: run
``vitx bench`` on a sample for it) and class sensitivity (it needs every class's mask). The ``random`` reference
draws its noise per chunk, and stochastic methods are seeded per chunk, so their values depend on the chunking.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.shapes import ShapesData
from ..errors import VitxError, one_line
from ..evaluate import checked_run, evaluate, metric_info
from ..images import load_images, read_image
from ..loading import load_model
from ..targets import resolve_targets
from .collection import Collection, Item, open_collection
from .scores import SECONDS, ScoreStore, check_settings
from .shards import WHOLE, check_shard
from .store import Store


@dataclass(frozen=True)
class Plan:
    """What a collection benchmark runs, checked: method names, metric names, ``{method: params}``, the seed, the
    images per chunk, and whether the items need masks."""
    methods: list
    metrics: list
    params: dict
    seed: int
    batch_size: int
    needs_masks: bool

    def settings(self, model, collection, command: str) -> dict:
        """The run's ``bench.json`` (:func:`.scores.check_settings`)."""
        return {"model": model.config.name or type(model.net).__name__, "methods": self.methods,
                "metrics": self.metrics, "params": self.params, "seed": self.seed, "variant": "single",
                "collection": collection.spec, "command": command}


def bench_collection(model, collection, methods, out_dir, *, metrics=None, shard=WHOLE, params: dict | None = None,
                     seed: int = 0, batch_size: int = 32, command: str = "", progress: bool = False) -> dict:
    """Score ``methods`` (names; the references ``random`` and ``ground-truth`` allowed) by ``metrics`` (None:
    every per-image metric) on shard ``shard`` of ``collection`` (a :class:`~vitx.engines.collection.Collection`
    or its spec, whose items have a ``label`` or ``target``, the class explained and scored, and a ``mask`` when a
    metric or reference needs one); write the scores under ``out_dir`` (:mod:`.scores`). Everything is checked before
    any work (the methods, their ``params``, the metrics, every item's class and mask, in one streamed pass); a rerun
    skips the (image, method) pairs done. Returns counts: ``done`` (pairs scored now), ``skipped`` (done before),
    ``errors`` (images or pairs that failed, recorded with their reason)."""
    model, collection, plan, shard, count = prepare_bench(model, collection, methods, metrics, shard, params, seed,
                                                          batch_size)
    scores, errors, done, counts = bench_stores(out_dir, shard, plan, model, collection, command)
    items = collection.items(shard)
    with tqdm(total=count, desc="images", disable=not progress) as bar:
        while chunk := list(islice(items, batch_size)):
            todo = {name: [i for i, item in enumerate(chunk) if (item.key, name) not in done] for name in plan.methods}
            counts["skipped"] += sum(len(chunk) - len(keep) for keep in todo.values())
            rows, failures, scored = score_chunk(model, plan, chunk, todo)
            scores.add(rows)
            for failure in failures:
                errors.error(**failure)
            counts["done"] += scored
            counts["errors"] += len(failures)
            bar.update(len(chunk))
    scores.flush()
    errors.finish()
    return counts


def bench_stores(out_dir, shard, plan, model, collection, command: str):
    """A shard's score store and error store, once the run's settings are checked against the earlier shards' (the
    same methods, metrics, parameters and seed); the (image, method) pairs already scored; counts at zero."""
    check_settings(out_dir, plan.settings(model, collection, command))
    scores = ScoreStore(out_dir, shard)
    return scores, Store(out_dir, shard), scores.done(), {"done": 0, "skipped": 0, "errors": 0}


def prepare_bench(model, collection, methods, metrics, shard, params, seed: int, batch_size: int):
    """(model, collection, :class:`Plan`, shard, the shard's item count), every argument and item checked (one
    streamed pass); ``collection``: a :class:`~vitx.engines.collection.Collection` or its spec."""
    model = load_model(model)
    if not isinstance(collection, Collection):
        collection = open_collection(collection)
    if model.bimodal or model.image_text or model.detector or model.config.multi_label:
        raise VitxError(f"the collection benchmark scores single-label image classifiers, and this "
                        f"{model.config.kind!r} model is not one: use vitx bench without --collection")
    shard = check_shard(shard)
    names, metric_names, params = checked_run(model, probe_data(model), methods, metrics, params, batch_size)
    rerun = [m for m in metric_names if "method" in metric_info(m).needs]
    if rerun and metrics is not None:
        raise VitxError(f"metric {rerun[0]!r} re-explains every image once per randomised block and is left out of "
                        "the collection benchmark: run vitx bench on a sample for it")
    metric_names = [m for m in metric_names if m not in rerun]
    needs_masks = "ground-truth" in names or any("masks" in metric_info(m).needs for m in metric_names)
    count = _check_items(model, collection, shard, needs_masks)
    return model, collection, Plan(names, metric_names, params, seed, batch_size, needs_masks), shard, count


def score_chunk(model, plan: Plan, chunk: list[Item], todo: dict, read=read_image) -> tuple[list, list, int]:
    """Decode ``chunk`` (``read``: a path to a PIL image) and score each method on its images ``todo[method]``
    (indices into ``chunk``). Returns (score rows of :data:`.scores.SCORE_SCHEMA`, failures as ``{key, path,
    method, reason}`` (``method`` None: the image or its mask could not be read), (image, method) pairs scored)."""
    decoded, failures, scored, rows = {}, [], 0, []
    for i in sorted(set().union(*todo.values())):
        try:
            decoded[i] = _decode(model, chunk[i], plan.needs_masks, read)
        except VitxError as err:
            failures.append({"key": chunk[i].key, "path": chunk[i].path, "method": None, "reason": one_line(err)})
    for name, wanted in todo.items():
        wanted = [i for i in wanted if i in decoded]
        if not wanted:
            continue
        images, labels, masks = (torch.stack([decoded[i][part] for i in wanted]) for part in range(3))
        settings = {name: plan.params[name]} if name in plan.params else None
        run = evaluate(model, _data(model, images, labels, masks, plan.seed), [name], plan.metrics, params=settings,
                       batch_size=plan.batch_size, seed=plan.seed, gallery=1, sanity_images=None)
        row = run.results["methods"][name]
        if "error" in row:
            failures += [{"key": chunk[i].key, "path": chunk[i].path, "method": name, "reason": row["error"]}
                         for i in wanted]
            continue
        values = {**run.scores[name], SECONDS: torch.full((len(wanted),), row["seconds"] / len(wanted))}
        rows += [{"key": chunk[i].key, "path": chunk[i].path, "method": name, "metric": metric,
                  "value": float(column[j]), "target": int(labels[j])}
                 for j, i in enumerate(wanted) for metric, column in values.items()]
        scored += len(wanted)
    return rows, failures, scored


def probe_data(model) -> ShapesData:
    """One blank image at ``model``'s size, labelled with its classes: what method and metric checks look at."""
    size = model.config.image_size
    return _data(model, torch.zeros(1, 3, *size), torch.zeros(1, dtype=torch.long),
                 torch.zeros(1, *size, dtype=torch.bool))


def _data(model, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> ShapesData:
    return ShapesData(images, labels, masks, tuple(model.config.class_names), "single", seed)


def _check_items(model, collection, shard: tuple[int, int], needs_masks: bool) -> int:
    """Every item's class and (when ``needs_masks``) mask path checked in one streamed pass; the count of items."""
    count = 0
    for item in collection.items(shard):
        _label(model, item)
        if needs_masks and item.mask is None:
            raise VitxError(f"{item.key!r} has no mask, and the metrics (or the ground-truth reference) need one: "
                            "give the collection a Parquet table with a 'mask' column, or choose --metrics without "
                            "masks (e.g. insertion_auc,deletion_auc,sparseness)")
        count += 1
    if not count:
        raise VitxError(f"shard {shard[0]}/{shard[1]} of the collection {collection.spec!r} holds no image")
    return count


def _label(model, item: Item) -> int:
    """The class ``item`` is scored on: its ``label`` (a class name or index), else its ``target``."""
    label = item.label if item.label is not None else item.target
    if label is None:
        raise VitxError(f"{item.key!r} has no label: the collection benchmark explains each image's true class "
                        "(a Parquet table with a 'label' column, a class name or index)")
    try:
        return int(resolve_targets([label], 1, model)[0])
    except VitxError as err:
        raise VitxError(f"the label of {item.key!r}: {one_line(err)}") from None


def _decode(model, item: Item, needs_masks: bool, read) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image (3, H, W) in [0, 1] at the model's size, its class, its mask (H, W) bool) of ``item``."""
    size = model.config.image_size
    image = read(item.path)
    pixels = load_images(image, size)[0][0]
    if not needs_masks:
        return pixels, torch.tensor(_label(model, item)), torch.zeros(size, dtype=torch.bool)
    mask = read(item.mask)
    if mask.size != image.size:
        raise VitxError(f"the mask {item.mask!r} is {mask.size[0]}x{mask.size[1]} and its image "
                        f"{image.size[0]}x{image.size[1]}")
    mask = mask.convert("L").resize((size[1], size[0]), Image.NEAREST)
    return pixels, torch.tensor(_label(model, item)), torch.from_numpy(np.asarray(mask) > 127)


__all__ = ["Plan", "bench_collection", "prepare_bench", "probe_data", "score_chunk"]
