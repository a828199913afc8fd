"""Where a collection run's rows go, resumable and atomic.

Layout of ``out``: ``rows/part-<k>of<n>-<seq>.parquet`` (rows of :data:`~vitx.engines.rows.ROW_SCHEMA`, at most
``rows_per_part`` each), ``errors/part-<k>of<n>-<seq>.parquet`` (:data:`~vitx.engines.rows.ERROR_SCHEMA`) and
``manifest.json``: ``{"format": 1, "shards": {"<k>/<n>": {"rows": .., "errors": .., "complete": bool,
"row_parts": [..], "error_parts": [..]}}}``. Every file is written under a temporary name (``.tmp-*``) and then
renamed, so a reader never sees half a file and a crash loses only the rows not yet flushed. The part files are the
truth: :meth:`Store.done` and :func:`read_rows` read them, and the manifest, rewritten at each flush, lists them
(several shards may share ``out``: each rewrites only its own entry, re-reading the others').
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import VitxError
from .rows import ERROR_SCHEMA, ROW_SCHEMA, errors_table, rows_table
from .shards import WHOLE, check_shard

ROWS_PER_PART = 256
MANIFEST = "manifest.json"
PART = re.compile(r"part-(\d+)of(\d+)-(\d+)\.parquet")


class Store:
    """Rows and errors of one shard ``(k, n)`` of a run into ``out_dir`` (created if missing)."""

    def __init__(self, out_dir, shard: tuple[int, int] = WHOLE, rows_per_part: int = ROWS_PER_PART):
        self.out = Path(out_dir)
        self.k, self.n = check_shard(shard)
        if rows_per_part < 1:
            raise VitxError(f"rows_per_part must be at least 1, got {rows_per_part}")
        self.rows_per_part = rows_per_part
        for folder in ("rows", "errors"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
            for stale in (self.out / folder).glob(f".tmp-part-{self.k}of{self.n}-*"):   # a killed run's half file
                stale.unlink(missing_ok=True)
        self._rows: list[dict] = []
        self._errors: list[dict] = []
        self._parts = {folder: {m[0]: pq.ParquetFile(self.out / folder / m[0]).metadata.num_rows
                                for m in part_names(self.out / folder) if (int(m[1]), int(m[2])) == (self.k, self.n)}
                       for folder in ("rows", "errors")}   # this shard's part files -> their row counts
        self._seq = 1 + max((int(PART.fullmatch(name)[3]) for parts in self._parts.values() for name in parts),
                            default=-1)

    @property
    def tag(self) -> str:
        return f"{self.k}/{self.n}"

    def done(self) -> set[tuple[str, str]]:
        """``(key, method)`` pairs already written by any shard (what a rerun skips)."""
        done = set()
        for file in part_files(self.out / "rows"):
            table = pq.read_table(file, columns=["key", "method"])
            done.update(zip(table.column("key").to_pylist(), table.column("method").to_pylist()))
        return done

    def add(self, row: dict) -> None:
        """Queue one row (a dict of :data:`ROW_SCHEMA`'s columns); a full part is written at once."""
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_part:
            self.flush()

    def error(self, key: str, path: str, method: str | None, reason: str) -> None:
        """Record that ``key`` (every method when ``method`` is None) could not be explained, and why."""
        self._errors.append({"key": key, "path": path, "method": method, "reason": reason})
        if len(self._errors) >= self.rows_per_part:
            self.flush()

    def flush(self, complete: bool = False) -> None:
        """Write what is queued as new part files, then the manifest (``complete``: this shard has finished)."""
        for folder, queued, table in (("rows", self._rows, rows_table), ("errors", self._errors, errors_table)):
            if queued:
                name = f"part-{self.k}of{self.n}-{self._seq:05d}.parquet"
                write_atomic(self.out / folder / name, lambda tmp, t=table(queued): pq.write_table(t, tmp))
                self._parts[folder][name] = len(queued)
                self._seq += 1
                queued.clear()
        self._write_manifest(complete)

    def finish(self) -> None:
        """Flush and mark this shard complete in the manifest."""
        self.flush(complete=True)

    def _write_manifest(self, complete: bool) -> None:
        manifest = read_manifest(self.out)
        rows, errors = self._parts["rows"], self._parts["errors"]
        manifest["shards"][self.tag] = {"rows": sum(rows.values()), "errors": sum(errors.values()),
                                        "complete": complete, "row_parts": sorted(rows), "error_parts": sorted(errors)}
        text = json.dumps(manifest, indent=1, sort_keys=True)
        write_atomic(self.out / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remaining(items, names: list[str], done: set, counts: dict):
    """Each of ``items`` with the methods of ``names`` it still needs (its ``(key, method)`` not in ``done``), items
    that need none left out and their pairs counted in ``counts["skipped"]``; a key listed twice is explained once
    (its pairs join ``done``)."""
    for item in items:
        wanted = [name for name in names if (item.key, name) not in done]
        counts["skipped"] += len(names) - len(wanted)
        done.update((item.key, name) for name in wanted)
        if wanted:
            yield item, wanted


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    write(str(tmp))
    os.replace(tmp, path)


def part_names(folder: Path):
    return [m for m in (PART.fullmatch(f.name) for f in sorted(folder.glob("part-*.parquet"))) if m]


def part_files(folder: Path) -> list[Path]:
    return [folder / m[0] for m in part_names(folder)]


def read_manifest(out_dir) -> dict:
    """``out_dir``'s manifest (an empty one when there is none yet)."""
    file = Path(out_dir) / MANIFEST
    if not file.exists():
        return {"format": 1, "shards": {}}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise VitxError(f"cannot read {str(file)!r} ({err})") from None


def _read(out_dir, folder: str, schema: pa.Schema) -> pa.Table:
    out = Path(out_dir)
    if not (out / MANIFEST).exists() and not (out / folder).is_dir():
        raise VitxError(f"{str(out)!r} holds no collection run (no {MANIFEST}, no {folder}/)")
    files = part_files(out / folder)
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files]) if files else schema.empty_table()


def read_rows(out_dir) -> pa.Table:
    """Every shard's rows in ``out_dir`` as one table (:data:`ROW_SCHEMA`)."""
    return _read(out_dir, "rows", ROW_SCHEMA)


def read_errors(out_dir) -> pa.Table:
    """Every shard's errors in ``out_dir`` as one table (:data:`ERROR_SCHEMA`), without those of a (key, method)
    explained since (a rerun retries what failed) and without repeats."""
    errors = _read(out_dir, "errors", ERROR_SCHEMA)
    if not errors.num_rows:
        return errors
    rows = read_rows(out_dir)
    explained = set(zip(rows.column("key").to_pylist(), rows.column("method").to_pylist()))
    keys = {key for key, _ in explained}
    seen, keep = set(), []
    for i, (key, method, reason) in enumerate(zip(*(errors.column(c).to_pylist() for c in ("key", "method",
                                                                                          "reason")))):
        fixed = key in keys if method is None else (key, method) in explained
        if not fixed and (key, method, reason) not in seen:
            seen.add((key, method, reason))
            keep.append(i)
    return errors.take(pa.array(keep, pa.int64()))
