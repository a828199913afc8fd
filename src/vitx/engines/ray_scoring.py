"""The collection benchmark on Ray (``vitx bench --collection SPEC --engine ray``): Ray tasks read each image's and
mask's bytes, an actor pool (``ray.data.ActorPoolStrategy``; the model loaded once per actor, on its GPU when it has
one) decodes them and scores each chunk with :func:`.scoring.score_chunk`, the very scoring of the in-process engine,
and the driver writes the rows through the same :class:`.scores.ScoreStore` and errors
:class:`~vitx.engines.store.Store`: the layout, resume and merge are those of :func:`.scoring.bench_collection`."""
from __future__ import annotations

import os
from dataclasses import asdict

import pyarrow as pa
import torch

from ..errors import VitxError
from ..images import read_image
from ..loading import load_model
from .collection import Item
from .ray_engine import (READ_CPUS, actor_cpus, actor_gpus, check_reachable, connected, drain, read_bytes,
                         require_ray)
from .scores import SCORE_SCHEMA, SECONDS, ScoreStore
from .scoring import Plan, bench_stores, prepare_bench, score_chunk
from .shards import WHOLE
from .store import Store

OUT_SCHEMA = SCORE_SCHEMA.append(pa.field("reason", pa.string()))   # reason: set on a failure row, else null


class Scorer:
    """The actors' callable: the model loaded once (a :func:`vitx.load_model` spec, or a model shipped to the
    actor), then per batch (``key``, ``path``, ``label``, ``target``, ``mask``, ``methods`` to run, ``bytes`` and
    ``mask_bytes`` or the ``error``/``mask_error`` that kept them unread) its score and failure rows
    (:data:`OUT_SCHEMA`)."""

    def __init__(self, model_source, plan: dict, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else None
        self.model = load_model(model_source, device=device)
        self.plan = Plan(**plan)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        files = {}
        for row in rows:
            files[row["path"]] = row["bytes"], row["error"]
            if row.get("mask") is not None:
                files[row["mask"]] = row["mask_bytes"], row["mask_error"]

        def read(path: str):
            data, error = files[path]
            if data is None:
                raise VitxError(error)
            return read_image(path, data)

        chunk = [Item(row["path"], row["key"], row.get("label"), row.get("target"), row.get("mask")) for row in rows]
        todo = {name: [i for i, row in enumerate(rows) if name in row["methods"]] for name in self.plan.methods}
        scores, failures, _ = score_chunk(self.model, self.plan, chunk, todo, read)
        out = scores + [{**failure, "metric": None, "value": None, "target": None} for failure in failures]
        return pa.Table.from_pydict({name: [row.get(name) for row in out] for name in OUT_SCHEMA.names}, OUT_SCHEMA)


def read_masks(batch: pa.Table) -> pa.Table:
    """A Ray task: each ``mask``'s bytes in ``mask_bytes`` (null, with the reason in ``mask_error``, when there is no
    mask or it cannot be read)."""
    data, errors = [], []
    for path in batch.column("mask").to_pylist() if "mask" in batch.column_names else [None] * batch.num_rows:
        try:
            with open(path, "rb") as file:
                data.append(file.read())
            errors.append(None)
        except (OSError, TypeError) as err:
            data.append(None)
            errors.append(None if path is None else f"cannot read the mask {path!r} ({getattr(err, 'strerror', err)})")
    return batch.append_column(pa.field("mask_bytes", pa.binary()), pa.array(data, pa.binary())).append_column(
        pa.field("mask_error", pa.string()), pa.array(errors, pa.string()))


def bench_ray(model, collection, methods, out_dir, *, metrics=None, shard=WHOLE, params: dict | None = None,
              seed: int = 0, batch_size: int = 32, command: str = "", address: str | None = None, actors: int = 1,
              gpus_per_actor: float | None = None, source=None) -> dict:
    """:func:`.scoring.bench_collection` on Ray (same arguments, checks, outputs and counts). ``address``: an existing
    cluster (refused in one line when unreachable), None a local one on 127.0.0.1; ``actors``: the actor pool's size
    (their CPUs together stay below the cluster's, so the read tasks run); ``gpus_per_actor``: default 1 when the
    cluster has GPUs, else 0. ``source``: what the actors load (a :func:`vitx.load_model` spec; default ``model``
    itself when it is one, else the model shipped to them)."""
    ray = require_ray()
    if actors < 1:
        raise VitxError(f"actors must be at least 1, got {actors}")
    if address is not None:
        check_reachable(address)
    if source is None:
        source = model
    model, collection, plan, shard, _ = prepare_bench(model, collection, methods, metrics, shard, params, seed,
                                                      batch_size)
    scores, errors, done, counts = bench_stores(out_dir, shard, plan, model, collection, command)
    todo = []
    for item in collection.items(shard):
        wanted = [name for name in plan.methods if (item.key, name) not in done]
        counts["skipped"] += len(plan.methods) - len(wanted)
        if wanted:
            todo.append({"key": item.key, "path": item.path, "label": item.label, "target": item.target,
                         "mask": item.mask, "methods": wanted})
    if todo:
        source = source if isinstance(source, (str, os.PathLike)) else model
        with connected(ray, address):
            cpus = actor_cpus(ray.cluster_resources().get("CPU", 1), actors)
            read = dict(batch_format="pyarrow", num_cpus=READ_CPUS, batch_size=batch_size)
            rows = (ray.data.from_items(todo).map_batches(read_bytes, **read).map_batches(read_masks, **read)
                    .map_batches(Scorer, fn_constructor_args=(source, asdict(plan), max(1, int(cpus))),
                                 compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
                                 batch_format="pyarrow", num_cpus=cpus, num_gpus=actor_gpus(ray, gpus_per_actor)))
            drain(rows, lambda batch: _write(batch, scores, errors, counts), scores)
    errors.finish()
    return counts


def _write(batch: pa.Table, scores: ScoreStore, errors: Store, counts: dict) -> None:
    """One batch of :class:`Scorer` rows (whole (image, method) pairs) into the stores."""
    good = []
    for row in batch.to_pylist():
        reason = row.pop("reason")
        if reason is None:
            good.append(row)
            counts["done"] += row["metric"] == SECONDS
        else:
            errors.error(row["key"], row["path"], row["method"], reason)
            counts["errors"] += 1
    scores.add(good)
