"""The rows a collection run writes: one per (image, method) (:data:`ROW_SCHEMA`), one per image or (image, method)
that failed (:data:`ERROR_SCHEMA`), and :func:`explanation_rows`, which turns an Explanation into rows. Arrays are
stored flat (``list<float32>``) beside their shape (``list<int32>``); :func:`row_array` gives one back shaped."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

ROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("path", pa.string()), ("method", pa.string()),
    ("params", pa.string()),             # JSON of the method's bound parameters
    ("target", pa.int64()), ("target_name", pa.string()),
    ("label", pa.string()),              # the collection's label, if it has one
    ("logits", pa.list_(pa.float32())),
    ("token_map", pa.list_(pa.float32())), ("token_shape", pa.list_(pa.int32())),   # null: a pixel-level method
    ("map", pa.list_(pa.float32())), ("map_shape", pa.list_(pa.int32())),   # the pixel map at the model's input size
])
ERROR_SCHEMA = pa.schema([
    ("key", pa.string()), ("path", pa.string()),
    ("method", pa.string()),             # null when the image itself could not be read
    ("reason", pa.string()),
])


def params_json(params: dict) -> str:
    """A method's bound parameters as JSON with sorted keys (values JSON cannot hold are written as text)."""
    return json.dumps(params, sort_keys=True, default=str)


def explanation_rows(exp, items, params: dict | None = None) -> list[dict]:
    """One row per image of ``exp`` (an :class:`~vitx.explanation.Explanation` of a batch, one map per image);
    ``items``: the batch's :class:`~vitx.engines.collection.Item` (or anything with ``key``, ``path`` and
    ``label``), in the same order. ``params``: the method's bound parameters (default: ``exp.params``)."""
    params = params_json(exp.params if params is None else params)
    maps = exp.maps.detach().float().cpu().numpy()
    tokens = None if exp.token_maps is None else exp.token_maps.detach().float().cpu().numpy()
    logits = exp.logits.detach().float().cpu().numpy()
    rows = []
    for i, item in enumerate(items):
        target = int(exp.targets[i])
        rows.append({"key": item.key, "path": item.path, "method": exp.method, "params": params, "target": target,
                     "target_name": exp.target_name(i), "label": getattr(item, "label", None),
                     "logits": logits[i].ravel(), "token_map": None if tokens is None else tokens[i].ravel(),
                     "token_shape": None if tokens is None else np.asarray(tokens[i].shape, np.int32),
                     "map": maps[i].ravel(),
                     "map_shape": np.asarray(maps[i].shape, np.int32)})
    return rows


def rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in ROW_SCHEMA.names}, ROW_SCHEMA)


def errors_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in ERROR_SCHEMA.names}, ERROR_SCHEMA)


def row_array(table: pa.Table, i: int, column: str = "map") -> np.ndarray:
    """Row ``i``'s ``map`` (or ``token_map``) as a float32 array of its shape (None for a null token map)."""
    shape = table.column("token_shape" if column == "token_map" else "map_shape")[i].as_py()
    if shape is None:
        return None
    return np.asarray(table.column(column)[i].values, dtype=np.float32).reshape(shape)
