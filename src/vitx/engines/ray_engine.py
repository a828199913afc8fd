"""The Ray engine: explain a collection on a Ray cluster (an existing one, by address, or a local one) with Ray Data.

:func:`explain_dataset` turns a Ray Dataset of raw image bytes into a Dataset of rows: an actor pool
(``ray.data.ActorPoolStrategy``) loads the model once per actor (on its GPU when it has one), decodes each image
inside the worker (an unreadable one becomes an error row, never a failed block) and explains it with every method.
Its rows are :data:`~vitx.engines.rows.ROW_SCHEMA`'s columns plus ``error`` (null for a good row; for a failed one
the reason, with ``key``, ``path`` and ``method`` (null when the image itself failed) filled and the rest null) and,
with ``overlays``, ``overlay`` (the overlay as PNG bytes).

:func:`run_ray` runs one shard of a collection through it and writes the rows on the driver through the same
:class:`~vitx.engines.store.Store` as the in-process engine (:mod:`.local`), so the layout, the manifest, resume and
the errors table are the same. Ray is an optional extra: ``pip install 'vitx[ray]'``.
"""
from __future__ import annotations

import io
import logging
import os
import socket
from contextlib import contextmanager, nullcontext
from urllib.parse import urlsplit

import pyarrow as pa
import torch

from ..errors import VitxError, one_line
from ..images import read_image
from ..loading import load_model
from ..model import as_model
from ..registry import get_method, refusals
from .collection import Item
from .batches import explain_pictures, failure
from .local import overlay_file, prepare, save_atomic
from .rows import ROW_SCHEMA
from .shards import WHOLE
from .store import ROWS_PER_PART, Store, remaining

OUT_SCHEMA = ROW_SCHEMA.append(pa.field("error", pa.string()))
OVERLAY_FIELD = pa.field("overlay", pa.binary())
CONNECT_TIMEOUT = 5.0   # seconds to reach a cluster's address before it is called unreachable
READ_CPUS = 0.25        # CPUs a read task asks for (reading bytes is light; the actors keep the rest)


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line :class:`VitxError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its data extra lacks it)
    except ImportError:
        raise VitxError("the Ray engine needs Ray Data: pip install 'vitx[ray]'") from None
    return ray


class Explainer:
    """The actors' callable: the model loaded once (``model_source`` for :func:`vitx.load_model`, or a model shipped
    to the actor), then, per batch of ``bytes``/``path``/``key`` (+ ``label``, ``target``, ``methods``: the methods
    to run for that image, default all; ``error``: a reason the image was not read), the batch's rows."""

    def __init__(self, model_source, methods, params, target=None, resize="stretch", overlays=False, threads=None,
                 model_options=None):
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else None
        if isinstance(model_source, (str, os.PathLike)):
            self.model = load_model(model_source, device=device, **(model_options or {}))
        else:
            self.model = as_model(model_source).to(device or "cpu")
        self.methods, self.params, self.target = list(methods), params, target
        self.resize, self.overlays = resize, overlays

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = batch.to_pydict()
        count = batch.num_rows
        get = lambda name: columns.get(name, [None] * count)   # noqa: E731
        rows, entries = [], []
        for data, path, key, label, target, methods, failed in zip(
                get("bytes"), get("path"), get("key"), get("label"), get("target"), get("methods"), get("error")):
            item = Item(path=path, key=key, label=None if label is None else str(label),
                        target=None if target is None else int(target))
            if failed is not None or data is None:
                rows.append(failure(item, None, failed or f"no bytes were read from {path!r}"))
                continue
            try:   # undecodable, truncated, a bomb: an error row, the run goes on
                entries.append((item, read_image(path, data), self.methods if methods is None else methods))
            except VitxError as err:
                rows.append(failure(item, None, err))
        explained, failures = explain_pictures(self.model, entries, self.methods, self.params, self.target,
                                               self.resize, self.overlays)
        for row in explained if self.overlays else ():
            png = io.BytesIO()
            row["overlay"].save(png, format="PNG")
            row["overlay"] = png.getvalue()
        return self._table(rows + failures + explained)

    def _table(self, rows: list[dict]) -> pa.Table:
        schema = OUT_SCHEMA.append(OVERLAY_FIELD) if self.overlays else OUT_SCHEMA
        return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in schema.names}, schema)


def actor_gpus(ray, gpus_per_actor: float | None) -> float:
    """``gpus_per_actor``, by default one GPU per actor where the cluster has GPUs, else none."""
    if gpus_per_actor is not None:
        return gpus_per_actor
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def drain(rows, write, store) -> None:
    """Every batch of the Ray Dataset ``rows`` through ``write`` on the driver, then ``store`` flushed, also when
    interrupted (what is done is kept)."""
    try:
        for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):
            write(batch)
    finally:
        store.flush()


def actor_cpus(total: float, actors: int) -> float:
    """CPUs per actor so that the actors leave at least one of the cluster's ``total`` (half of one on a one-CPU
    cluster) to the read tasks (actors that take every CPU starve the reads, and the run deadlocks); at most 1."""
    spare = total - 1 if total >= 2 else total / 2
    return max(min(1.0, spare / actors), 0.01)


def explain_dataset(ds, model_source, methods, *, params=None, target=None, batch_size: int = 32, actors: int = 1,
                    gpus_per_actor: float = 0, cpus_per_actor: float | None = None, resize: str = "stretch",
                    overlays: bool = False, model_options: dict | None = None):
    """``ds`` (a Ray Dataset with columns ``bytes``, ``path``, ``key``, optionally ``label``, ``target``,
    ``methods``, ``error``) explained by an actor pool of ``actors`` (see the module's docstring for the rows).
    ``methods``: names (or one comma-separated string); ``params``: ``{method: {name: value}}``, bound here (an
    unknown method or parameter is refused before anything runs);
    ``target``: a class index for every image without its own. ``gpus_per_actor``: GPUs each actor takes;
    ``cpus_per_actor``: default :func:`actor_cpus` of the cluster's CPUs. ``model_options``: more arguments of
    :func:`vitx.load_model` (``arch``, ``weights``). Lazy: nothing runs until it is read."""
    ray = require_ray()
    if actors < 1 or batch_size < 1:
        raise VitxError(f"actors and batch_size must be at least 1, got {actors} and {batch_size}")
    methods = [name.strip() for name in methods.split(",")] if isinstance(methods, str) else list(methods)
    params = {name: get_method(name).bind((params or {}).get(name, {})) for name in methods}   # refused here
    if cpus_per_actor is None:   # before its first read, Ray may not be started: this machine stands for the cluster
        total = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count()
        cpus_per_actor = actor_cpus(total, actors)
    threads = max(1, int(cpus_per_actor))
    return ds.map_batches(Explainer, fn_constructor_args=(model_source, methods, params, target, resize,
                                                          overlays, threads, model_options),
                          compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
                          batch_format="pyarrow", num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)


def read_bytes(batch: pa.Table) -> pa.Table:
    """A Ray task: each ``path``'s bytes in ``bytes`` (null, with the reason in ``error``, when it cannot be read)."""
    data, errors = [], []
    for path in batch.column("path").to_pylist():
        try:
            with open(path, "rb") as file:
                data.append(file.read())
            errors.append(None)
        except OSError as err:
            data.append(None)
            errors.append(f"cannot read {path!r} ({err.strerror or one_line(err)})")
    return batch.append_column(pa.field("bytes", pa.binary()), pa.array(data, pa.binary())).append_column(
        pa.field("error", pa.string()), pa.array(errors, pa.string()))


def run_ray(collection, model_source, methods, out_dir, *, address=None, actors: int = 1, shard=WHOLE, params=None,
            target=None, batch_size: int = 32, overlays: bool = False, rows_per_part: int = ROWS_PER_PART,
            resize: str = "stretch", gpus_per_actor: float | None = None, model_options: dict | None = None) -> dict:
    """Explain shard ``shard`` of ``collection`` on Ray into ``out_dir``, like :func:`.local.explain_collection`
    (same arguments, layout and counts ``{"done", "skipped", "errors"}``). ``address``: an existing cluster
    (``host:port`` or ``ray://host:port``; an unreachable one is refused within :data:`CONNECT_TIMEOUT` seconds);
    None starts a local one on 127.0.0.1 (or uses the Ray this process has already started). ``model_source``: a
    :func:`vitx.load_model` spec, loaded once here (checks) and once per actor; a model object is shipped to the
    actors (``model_options``: more arguments of :func:`vitx.load_model`, ``arch`` and ``weights``, for both).
    ``methods``: names, one comma-separated string, or ``"all"`` (every method that applies to the model).
    ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0. A Ray this process has already initialised is
    used as it is (``address`` then only checked for reachability)."""
    ray = require_ray()
    if actors < 1 or batch_size < 1:
        raise VitxError(f"actors and batch_size must be at least 1, got {actors} and {batch_size}")
    if address is not None:
        check_reachable(address)
    named = isinstance(model_source, (str, os.PathLike))
    model = load_model(model_source, **(model_options or {})) if named else as_model(model_source)
    if methods == "all":
        methods = [name for name, why in refusals(model).items() if why is None]
    model, collection, names, bound, target, shard = prepare(model, collection, methods, shard=shard, params=params,
                                                             target=target)
    source = model_source if named else model
    with connected(ray, address) if address is not None else nullcontext():   # joined before out_dir is touched
        store, todo, counts = pending(collection, shard, names, out_dir, rows_per_part)
        if todo:
            with connected(ray, None):   # a local cluster, unless Ray is up
                blocks = -(-len(todo) // batch_size)   # a read task per batch (Ray's default: a block per few items)
                items = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
                    read_bytes, batch_format="pyarrow", num_cpus=READ_CPUS, batch_size=batch_size)
                rows = explain_dataset(items, source, names, params=bound, target=target, batch_size=batch_size,
                                       actors=actors, gpus_per_actor=actor_gpus(ray, gpus_per_actor), resize=resize,
                                       overlays=overlays, model_options=model_options)
                drain(rows, lambda batch: write_batch(batch, store, counts, overlays), store)
        store.finish()
    return counts


def pending(collection, shard, names, out_dir, rows_per_part):
    """The shard's store, its items with the methods each still needs, and the counts so far (the skipped pairs)."""
    store = Store(out_dir, shard, rows_per_part)
    done = store.done()
    counts = {"done": 0, "skipped": 0, "errors": 0}
    todo = [{"key": item.key, "path": item.path, "label": item.label, "target": item.target, "methods": wanted}
            for item, wanted in remaining(collection.items(shard), names, done, counts)]
    return store, todo, counts


def write_batch(batch: pa.Table, store: Store, counts: dict, overlays: bool) -> None:
    """One batch of :func:`explain_dataset`'s rows into ``store`` (error rows as errors; overlays as files)."""
    for row in arrow_rows(batch):
        reason, picture = row.pop("error"), row.pop("overlay", None)
        if reason is not None:
            store.error(row["key"], row["path"], row["method"], reason)
            counts["errors"] += 1
            continue
        store.add(row)
        counts["done"] += 1
        if overlays and picture is not None:
            save_atomic(picture, overlay_file(store.out, row["key"], row["method"]))


def arrow_rows(table: pa.Table) -> list[dict]:
    """``table``'s rows as dicts, its list columns as numpy views (not Python lists: a 224x224 map is 50,176 floats,
    and the driver writes every row of the run)."""
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type):
            offsets = column.offsets.to_numpy()
            values = column.values.to_numpy(zero_copy_only=False)
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            columns[name] = [values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(column))]
        else:
            columns[name] = column.to_pylist()
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def check_reachable(address: str) -> None:
    """A one-line VitxError naming ``address`` unless a TCP connection to it opens within :data:`CONNECT_TIMEOUT`
    (``ray.init`` itself would retry for minutes). ``auto`` and ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise VitxError(f"the Ray address {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise VitxError(f"cannot reach the Ray cluster at {address!r} ({err.strerror or one_line(err)})") from None


@contextmanager
def connected(ray, address):
    """Ray connected for the block: to ``address``, or to a local cluster on 127.0.0.1 started here (and shut down
    after); a Ray this process has already initialised is used as it is."""
    if ray.is_initialized():
        yield
        return
    if address is None:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level="WARNING")
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except Exception as err:   # ConnectionError (caused by an AuthenticationError when a token is missing)
            raise VitxError(connect_failure(address, err)) from None
    quiet(ray)
    try:
        yield
    finally:
        ray.shutdown()


def connect_failure(address: str, err: BaseException) -> str:
    """Why ``ray.init(address=...)`` failed, in one line; for a cluster with token authentication (what Ray 2.5x+
    enables by default) that this client did not authenticate to, what to set."""
    causes = []
    while err is not None and len(causes) < 8:
        causes.append(err)
        err = err.__cause__ or err.__context__
    if any(type(cause).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(cause) for cause in causes):
        return (f"the Ray cluster at {address!r} asks for its authentication token: set RAY_AUTH_MODE=token here, "
                "with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
    return f"cannot connect to the Ray cluster at {address!r} ({one_line(causes[0])})"


def quiet(ray) -> None:
    """Ray Data's warnings and progress bars on the driver's terminal, not its per-run logs."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().print_on_execution_start = False
