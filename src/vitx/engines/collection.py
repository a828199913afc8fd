"""Collections of images, named by one spec and streamed item by item.

A spec is a folder (its image files, recursively, sorted by relative path), a glob (a spec with ``*``, ``?`` or
``[``; ``**`` recurses), a text file (``.txt``/``.lst``: one path per line, relative to the file's folder, blank and
``#`` lines skipped) or a Parquet table (``.parquet``: column ``path`` required, relative to the table's folder unless
absolute; optional ``label``, ``target`` and ``mask``, a mask image's path resolved the same way), read in batches,
never whole. Each :class:`Item` has a ``key``: its path as the collection names it (relative to the folder, to the
glob's fixed leading folders, or as the list or the table writes it), the identity that shards and resume go by.
"""
from __future__ import annotations

import glob as globbing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import VitxError
from .shards import WHOLE, check_shard, in_shard

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LIST_SUFFIXES = (".txt", ".lst")
TABLE_COLUMNS = ("path", "label", "target", "mask")
BATCH_ROWS = 1024   # rows of a Parquet table read at a time


@dataclass(frozen=True)
class Item:
    """One image of a collection: ``path`` (to open), ``key`` (the path as the collection names it), and what a
    table may say of it: ``label`` (a class name or index, as text), ``target`` (an int class index), ``mask``
    (a mask image's path)."""
    path: str
    key: str
    label: str | None = None
    target: int | None = None
    mask: str | None = None


class Collection:
    """A spec's images: :meth:`items` streams them (one shard of them); ``len()`` and :attr:`size` count them (a
    table's count comes from its metadata, without reading it)."""

    def __init__(self, spec: str, kind: str, source):
        self.spec, self.kind, self._source = spec, kind, source

    @property
    def size(self) -> int | None:
        if self.kind == "parquet":
            return self._source.metadata.num_rows
        return len(self._source)

    def __len__(self) -> int:
        return self.size

    def items(self, shard: tuple[int, int] = WHOLE) -> Iterator[Item]:
        k, n = check_shard(shard)
        stream = self._table_items() if self.kind == "parquet" else iter(self._source)
        return (item for item in stream if in_shard(item.key, k, n))

    def _table_items(self) -> Iterator[Item]:
        table = self._source
        base = Path(self.spec).parent
        columns = [name for name in TABLE_COLUMNS if name in table.schema_arrow.names]
        for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            rows = batch.to_pydict()
            for i, path in enumerate(rows["path"]):
                if path is None:
                    continue
                mask = rows.get("mask", [None] * (i + 1))[i]
                target = rows.get("target", [None] * (i + 1))[i]
                label = rows.get("label", [None] * (i + 1))[i]
                yield Item(path=_resolve(base, path), key=str(path), label=None if label is None else str(label),
                           target=None if target is None else int(target),
                           mask=None if mask is None else _resolve(base, mask))

    def __repr__(self) -> str:
        return f"Collection({self.spec!r}, kind={self.kind!r}, size={self.size})"


def _resolve(base: Path, path: str) -> str:
    return str(path) if os.path.isabs(path) else str(base / path)


def _glob_root(spec: str) -> str:
    """The folder a glob starts from: its leading components without a wildcard (keys are relative to it)."""
    parts = []
    for part in Path(spec).parts[:-1]:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def is_collection_spec(spec: str) -> bool:
    """Whether a single command-line argument names a collection rather than one image file: a folder, a glob, a
    list or a table, or a missing path that is not named like an image."""
    spec, path = str(spec), Path(spec)
    return (path.is_dir() or any(c in spec for c in "*?[") or spec.lower().endswith(LIST_SUFFIXES + (".parquet",))
            or (not path.exists() and path.suffix.lower() not in IMAGE_SUFFIXES))


def open_collection(spec) -> Collection:
    """The collection that ``spec`` names (see the module's docstring); a :class:`VitxError` before any work for a
    missing folder, list or table, a glob or folder with no image, a table without a ``path`` column."""
    spec = str(spec)
    path = Path(spec)
    if any(c in spec for c in "*?[") and not path.exists():
        files = sorted(f for f in globbing.glob(spec, recursive=True) if os.path.isfile(f))
        if not files:
            raise VitxError(f"the collection {spec!r} matches no file")
        root = _glob_root(spec)
        return Collection(spec, "glob", [Item(path=f, key=os.path.relpath(f, root)) for f in files])
    if not path.exists():
        raise VitxError(f"the collection {spec!r} does not exist")
    if path.is_dir():
        files = sorted(str(f.relative_to(path)) for f in path.rglob("*")
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise VitxError(f"the folder {spec!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        return Collection(spec, "folder", [Item(path=str(path / f), key=f) for f in files])
    suffix = path.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return Collection(spec, "list", _list_items(path))
    if suffix == ".parquet":
        return Collection(spec, "parquet", _open_table(path))
    raise VitxError(f"the collection {spec!r} is not a folder, a glob, a .txt/.lst list or a .parquet table")


def _list_items(path: Path) -> list[Item]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise VitxError(f"cannot read the list {str(path)!r} ({err})") from None
    names = [line.strip() for line in lines]
    return [Item(path=_resolve(path.parent, name), key=name) for name in names if name and not name.startswith("#")]


def _open_table(path: Path):
    import pyarrow.parquet as pq
    try:
        table = pq.ParquetFile(path)
    except Exception as err:   # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise VitxError(f"cannot read {str(path)!r} as a Parquet table ({' '.join(str(err).split())})") from None
    names = table.schema_arrow.names
    if "path" not in names:
        raise VitxError(f"the Parquet table {str(path)!r} has no 'path' column (its columns: "
                        f"{', '.join(names) or 'none'})")
    return table
