"""Where a collection benchmark's per-image scores go, and the leaderboard they merge into.

Layout of ``out`` (beside the errors table and manifest that :class:`~vitx.engines.store.Store` keeps):
``bench.json`` (the run's settings: model, methods, metrics, parameters, seed, collection, command; every shard of
a run must agree with it) and ``scores/part-<k>of<n>-<seq>.parquet``, rows of :data:`SCORE_SCHEMA`, one per (image,
method, metric) and a ``seconds`` row per (image, method) (its share of its chunk's explaining time). A part holds
whole (image, method) pairs, written under a temporary name then renamed, so a pair is either all there or absent
(what :meth:`ScoreStore.done` says is done is done) and a crash loses at most the pairs not yet written.
:func:`merge` aggregates every shard into the results and leaderboard ``vitx bench`` writes (mean ± standard error
of the per-image values).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..bench import leaderboard
from ..errors import VitxError
from ..evaluate import _mean_sem   # the leaderboard's own statistic, so that both benches agree
from .shards import WHOLE, check_shard
from .store import part_files, part_names, write_atomic, read_errors, read_manifest

SCORE_SCHEMA = pa.schema([
    ("key", pa.string()), ("path", pa.string()), ("method", pa.string()), ("metric", pa.string()),
    ("value", pa.float64()),             # NaN where the metric is undefined for the image
    ("target", pa.int64()),              # the class explained and scored (the image's label)
])
SETTINGS = "bench.json"
SECONDS = "seconds"                      # the pseudo-metric holding each image's share of the explaining time
ROWS_PER_PART = 4096                     # score rows are small: 4096 is ~270 (image, method) pairs of 15 scores
SAME_RUN = ("model", "methods", "metrics", "params", "seed", "variant")


class ScoreStore:
    """Score rows of one shard ``(k, n)`` of a collection benchmark into ``out_dir/scores``."""

    def __init__(self, out_dir, shard: tuple[int, int] = WHOLE, rows_per_part: int = ROWS_PER_PART):
        self.folder = Path(out_dir) / "scores"
        self.k, self.n = check_shard(shard)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f".tmp-part-{self.k}of{self.n}-*"):   # a killed run's half file
            stale.unlink(missing_ok=True)
        self.rows_per_part, self._rows = rows_per_part, []
        self._seq = 1 + max((int(m[3]) for m in part_names(self.folder) if (int(m[1]), int(m[2])) == (self.k, self.n)),
                            default=-1)

    def done(self) -> set[tuple[str, str]]:
        """``(key, method)`` pairs already scored by any shard (what a rerun skips)."""
        done = set()
        for file in part_files(self.folder):
            table = pq.read_table(file, columns=["key", "method"])
            done.update(zip(table.column("key").to_pylist(), table.column("method").to_pylist()))
        return done

    def add(self, rows: list[dict]) -> None:
        """Queue ``rows`` (dicts of :data:`SCORE_SCHEMA`'s columns, whole (image, method) pairs); a part is written
        once ``rows_per_part`` rows are queued."""
        self._rows.extend(rows)
        if len(self._rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one part (atomically)."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        table = pa.Table.from_pydict({name: [row[name] for row in rows] for name in SCORE_SCHEMA.names}, SCORE_SCHEMA)
        write_atomic(self.folder / f"part-{self.k}of{self.n}-{self._seq:05d}.parquet",
                      lambda tmp: pq.write_table(table, tmp))
        self._seq += 1


def check_settings(out_dir, settings: dict) -> None:
    """Record ``settings`` in ``out_dir/bench.json``, or refuse them in one line when another run there (an earlier
    one, another shard) used different ones: their scores would not belong in one leaderboard."""
    file = Path(out_dir) / SETTINGS
    if file.exists():
        earlier = read_settings(out_dir)
        differ = [key for key in SAME_RUN if earlier.get(key) != settings.get(key)]
        if differ:
            raise VitxError(f"--out {str(out_dir)!r} holds a benchmark with other {', '.join(differ)} "
                            f"({', '.join(f'{k}={earlier.get(k)!r}' for k in differ)}): choose another --out")
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings, indent=1)
    write_atomic(file, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def read_settings(out_dir) -> dict:
    file = Path(out_dir) / SETTINGS
    if not file.exists():
        raise VitxError(f"{str(out_dir)!r} holds no collection benchmark (no {SETTINGS})")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise VitxError(f"cannot read {str(file)!r} ({err})") from None


def read_scores(out_dir) -> pa.Table:
    """Every shard's score rows in ``out_dir`` as one table (:data:`SCORE_SCHEMA`), a row repeated by overlapping
    runs kept once."""
    files = part_files(Path(out_dir) / "scores")
    table = pa.concat_tables([pq.read_table(f, schema=SCORE_SCHEMA) for f in files]) if files else \
        SCORE_SCHEMA.empty_table()
    seen, keep = set(), []
    for i, triple in enumerate(zip(*(table.column(c).to_pylist() for c in ("key", "method", "metric")))):
        if triple not in seen:
            seen.add(triple)
            keep.append(i)
    return table.take(keep) if len(keep) < table.num_rows else table


def merge(out_dir) -> dict:
    """The results of every shard in ``out_dir``, as ``vitx bench`` writes them (results.json's table): per method
    its parameters, each metric's mean and standard error over the images (``<metric>_sem``), ``seconds`` (the
    method's explaining time, summed), ``images_per_second`` and ``images`` (how many it scored); ``n`` the images
    scored, ``shards`` whether each shard finished, ``incomplete`` the methods some image lacks, ``errors`` the
    images and (image, method) pairs that failed and were not scored since."""
    settings = read_settings(out_dir)
    table = read_scores(out_dir)
    values: dict = {}
    for key, method, metric, value in zip(*(table.column(c).to_pylist() for c in ("key", "method", "metric",
                                                                                   "value"))):
        values.setdefault(method, {}).setdefault(metric, {})[key] = value
    keys = sorted({key for metrics in values.values() for scores in metrics.values() for key in scores})
    rows, incomplete = {}, []
    for method in settings["methods"]:
        metrics = values.get(method)
        if not metrics:
            continue
        row = {"params": settings["params"].get(method, {})}
        for metric in settings["metrics"]:
            scores = metrics.get(metric, {})
            row[metric], row[f"{metric}_sem"] = _mean_sem(torch.tensor(list(scores.values()), dtype=torch.float64))
        seconds = sum(metrics.get(SECONDS, {}).values())
        row["images"] = len(metrics.get(SECONDS, {}))
        row[SECONDS] = round(seconds, 4)
        row["images_per_second"] = round(row["images"] / seconds, 2) if seconds > 0 else None
        if row["images"] < len(keys):
            incomplete.append(method)
        rows[method] = row
    shards = {tag: {"complete": entry.get("complete")} for tag, entry in read_manifest(out_dir)["shards"].items()}
    scored = {(key, method) for method, metrics in values.items() for key in metrics.get(SECONDS, {})}
    errors = read_errors(out_dir) if (Path(out_dir) / "errors").is_dir() else None
    failed = 0 if errors is None else sum(
        (key, method) not in scored if method else not any((key, m) in scored for m in settings["methods"])
        for key, method in zip(errors.column("key").to_pylist(), errors.column("method").to_pylist()))
    return {"model": settings["model"], "n": len(keys), "seed": settings["seed"], "data_seed": None,
            "variant": settings["variant"], "explanations": len(keys), "collection": settings["collection"],
            "shards": shards, "incomplete": incomplete, "errors": failed, "methods": rows}


def write_results(out_dir, results: dict) -> dict[str, Path]:
    """results.json and leaderboard.md (as ``vitx bench`` writes them) from :func:`merge`'s ``results``."""
    out = Path(out_dir)
    command = read_settings(out)["command"]
    files = {"json": out / "results.json", "leaderboard": out / "leaderboard.md"}
    text = json.dumps({**results, "command": command}, indent=2) + "\n"
    write_atomic(files["json"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    board = f"`{command}`\n\n{leaderboard(results)}\n"
    write_atomic(files["leaderboard"], lambda tmp: Path(tmp).write_text(board, encoding="utf-8"))
    return files
