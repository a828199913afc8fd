"""The in-process engine: explain one shard of a collection, batch by batch, into a :class:`~vitx.engines.store.Store`.

Every image is decoded on its own: one that cannot be read or preprocessed becomes an error row with the reason
(method null) and the run goes on; a method that refuses a batch (a :class:`VitxError`) becomes an error row per
image of that batch and method. A rerun skips the ``(key, method)`` pairs already written and retries the others.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..errors import VitxError, one_line
from ..images import read_image
from ..loading import load_model
from ..model import Model, as_model
from ..registry import get_method
from ..targets import resolve_targets
from .collection import Collection, Item, open_collection
from .batches import explain_pictures
from .shards import WHOLE, check_shard
from .store import ROWS_PER_PART, Store, remaining, write_atomic


def prepare(model, collection, methods, *, shard=WHOLE, params=None, target=None):
    """Everything checked before any work: the model (a :class:`~vitx.model.Model`, a module or a spec for
    :func:`vitx.load_model`), the collection (or its spec), the methods (names, or one comma-separated string) and
    their ``params`` (``{method: {name: value}}``), the shard and the ``target`` (None, or a class index or name for
    every image). Returns ``(model, collection, methods, bound params, target index or None, shard)``."""
    shard = check_shard(shard)
    collection = collection if isinstance(collection, Collection) else open_collection(collection)
    names = [name.strip() for name in methods.split(",")] if isinstance(methods, str) else list(methods)
    if not names or len(set(names)) != len(names):
        raise VitxError(f"methods must be distinct method names, got {names!r}")
    infos = [get_method(name) for name in names]
    unknown = sorted(set(params or {}) - set(names))
    if unknown:
        raise VitxError(f"parameters given for {', '.join(unknown)}, which is not among the methods {names}")
    model = load_model(model) if isinstance(model, (str, os.PathLike)) else as_model(model)
    if model.config.input != "pixels" or model.detector or model.bimodal or model.image_text:
        raise VitxError(f"a collection is explained with an image classifier; this model is a {model.config.kind!r} "
                        "model (explain its inputs with vitx.explain)")
    layout = model.layout()
    bound = {}
    for info in infos:
        bound[info.name] = info.bind((params or {}).get(info.name, {}))
        info.check_model(model, layout, bound[info.name])
    if target is not None:
        target = int(resolve_targets(target, 1, model)[0])
    return model, collection, names, bound, target, shard


def explain_collection(model, collection, methods, out_dir, *, shard=WHOLE, params=None, target=None,
                       batch_size: int = 32, overlays: bool = False, progress: bool = False,
                       rows_per_part: int = ROWS_PER_PART, resize: str = "stretch") -> dict:
    """Explain shard ``shard`` of ``collection`` with every method into ``out_dir`` (see :mod:`vitx.engines.store`
    for the layout); returns the counts ``{"done": rows written, "skipped": (image, method) pairs already there,
    "errors": error rows written}``. An item's own ``target`` (a Parquet collection's column) wins over ``target``;
    without either, the predicted class is explained. ``overlays``: also ``out/overlays/<key without its
    suffix>_<method>.png``. Bad arguments are refused (:func:`prepare`) before ``out_dir`` is touched."""
    if batch_size < 1:
        raise VitxError(f"batch_size must be at least 1, got {batch_size}")
    model, collection, names, bound, target, shard = prepare(model, collection, methods, shard=shard, params=params,
                                                             target=target)
    store = Store(out_dir, shard, rows_per_part)
    done = store.done()
    counts = {"done": 0, "skipped": 0, "errors": 0}
    items = tqdm(collection.items(shard), total=collection.size if shard == WHOLE else None, unit="image",
                 disable=not progress, delay=1)
    batch: list[tuple[Item, list[str]]] = []   # each item with the methods it still needs
    try:
        for entry in remaining(items, names, done, counts):
            batch.append(entry)
            if len(batch) == batch_size:
                _explain_batch(model, batch, names, bound, target, store, counts, overlays, resize)
                batch = []
        if batch:
            _explain_batch(model, batch, names, bound, target, store, counts, overlays, resize)
    except BaseException:   # what is explained is kept, also when interrupted
        store.flush()
        raise
    finally:
        items.close()
    store.finish()
    return counts


def _explain_batch(model: Model, batch, names, bound, target, store, counts, overlays, resize) -> None:
    entries = []
    for item, todo in batch:
        try:
            entries.append((item, read_image(item.path), todo))
        except VitxError as err:   # missing, undecodable, truncated, a bomb: logged, and the run goes on
            store.error(item.key, item.path, None, one_line(err))
            counts["errors"] += 1
    rows, failures = explain_pictures(model, entries, names, bound, target, resize, overlays)
    for failed in failures:
        store.error(failed["key"], failed["path"], failed["method"], failed["error"])
    for row in rows:
        picture = row.pop("overlay", None)
        store.add(row)
        if picture is not None:
            save_atomic(picture, overlay_file(store.out, row["key"], row["method"]))
    counts["done"] += len(rows)
    counts["errors"] += len(failures)


def overlay_file(out: Path, key: str, method: str) -> Path:
    """``out/overlays/<key without its suffix>_<method>.png`` (the key's folders kept; never outside ``out``)."""
    parts = [part for part in PurePosixPath(key.replace("\\", "/")).with_suffix("").parts
             if part not in ("/", "..", ".")] or ["image"]
    return Path(out, "overlays", *parts[:-1], f"{parts[-1]}_{method}.png")


def save_atomic(picture, path: Path) -> None:
    """An overlay (a PIL image, or PNG bytes as the Ray actors send it) written atomically at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(picture) if isinstance(picture, bytes)
                 else picture.save(tmp, format="PNG"))
