"""``vitx explain SPEC`` on a collection (a folder, a glob, a .txt/.lst list or a .parquet table) into Parquet rows,
one shard at a time, resumable (:mod:`vitx.engines`); ``vitx merge``: the shards of a run as one table
(of a ``vitx bench --collection`` run: its leaderboard, as ``vitx bench --merge``)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from ..engines import is_collection_spec, open_collection, parse_shard, read_errors, read_manifest, read_rows
from ..engines.local import explain_collection, prepare
from ..engines.scores import SETTINGS, read_scores
from ..engines.store import ROWS_PER_PART
from ..errors import VitxError
from ..loading import WITH_WEIGHTS_FILE, load_model
from ..viz.text import plural
from .bench_collection import show_merged
from .explaining import applicable_methods, run_explain
from .options import comma_list, method_params, one_line_warnings, output_dir

COLLECTION_ONLY = ("shard", "overlays", "engine", "ray_address", "actors", "rows_per_part")   # None/False unless given
IMAGES_ONLY = {"text": "--text", "score_threshold": "--score-threshold", "original_size": "--original-size",
               "memory": "--memory"}


def run_explain_any(args) -> int:
    """``vitx explain``: a collection into rows, or image files as before."""
    if not collection_mode(args):
        return run_explain(args)
    with one_line_warnings():
        return run_collection(args)


def collection_mode(args) -> bool:
    """Whether ``vitx explain``'s arguments name one collection; options of the other mode are refused."""
    if len(args.images) == 1 and is_collection_spec(args.images[0]):
        for name, flag in IMAGES_ONLY.items():
            if getattr(args, name) not in (None, False):
                raise VitxError(f"{flag} is for image files; a collection is explained image by image into rows")
        return True
    for name in COLLECTION_ONLY:
        if getattr(args, name) not in (None, False):
            raise VitxError(f"--{name.replace('_', '-')} is for a collection: give one folder, glob, .txt/.lst or "
                            ".parquet instead of image files")
    return False


def run_collection(args) -> int:
    shard = parse_shard(args.shard) if args.shard is not None else (0, 1)
    if args.engine != "ray" and (args.ray_address is not None or args.actors is not None):
        raise VitxError("--ray-address and --actors are for --engine ray")
    if args.weights and not args.model.startswith(WITH_WEIGHTS_FILE):
        raise VitxError("--weights is for timm:<name> and torchvision:<name> models only")
    collection = open_collection(args.images[0])
    rows_per_part = args.rows_per_part or ROWS_PER_PART
    run_ray = _ray_engine() if args.engine == "ray" else None
    model = load_model(args.model, arch=args.arch, weights=args.weights, device=args.device)
    layout = model.layout()
    names = ([info.name for info in applicable_methods(model, layout)] if args.method == "all"
             else comma_list(args.method))
    params = method_params(args.param, names, model, layout, "explained")
    prepare(model, collection, names, shard=shard, params=params, target=args.target)   # refused before --out
    options = dict(shard=shard, params=params, target=args.target, batch_size=args.batch_size, overlays=args.overlays,
                   rows_per_part=rows_per_part, resize=args.resize)
    with output_dir(args.out):
        if run_ray is not None:   # the actors load the model themselves, from its name
            counts = run_ray(collection, args.model, names, args.out, address=args.ray_address,
                             actors=args.actors or 1, model_options=dict(arch=args.arch, weights=args.weights),
                             **options)
        else:
            counts = explain_collection(model, collection, names, args.out, progress=True, **options)
    part = "" if shard == (0, 1) else f" (shard {shard[0]}/{shard[1]})"
    print(f"{plural(counts['done'], 'row')} written{part}, {counts['skipped']} already done, "
          f"{plural(counts['errors'], 'error')}: {args.out / 'rows'}"
          + (f"; why: {args.out / 'errors'}" if counts["errors"] else "") + f"\none table: vitx merge {args.out}")
    return 0


def _ray_engine():
    try:
        from ..engines.ray_engine import run_ray
    except ModuleNotFoundError as err:
        if err.name == "vitx.engines.ray_engine":
            raise VitxError("the ray engine is not built in this version of vitx (use --engine local)") from None
        raise
    return run_ray


def run_merge(args) -> int:
    if args.out is not None and args.out.suffix.lower() != ".parquet":
        raise VitxError(f"--out {str(args.out)!r} must be a .parquet file")
    if (Path(args.dir) / SETTINGS).exists():   # a collection benchmark: its leaderboard, its scores as one table
        if args.out is not None:
            _write_table(read_scores(args.dir), args.out)
            print(f"wrote {args.out}")
        return show_merged(Path(args.dir))
    rows, errors = read_rows(args.dir), read_errors(args.dir)
    shards = read_manifest(args.dir)["shards"]
    for tag, entry in sorted(shards.items()):
        print(f"shard {tag}: {plural(entry['rows'], 'row')}, {plural(entry['errors'], 'error')}"
              f"{'' if entry.get('complete') else ' (not complete)'}")
    keys = len(set(rows.column("key").to_pylist()))
    print(f"{plural(rows.num_rows, 'row')} ({plural(keys, 'image')}), {plural(errors.num_rows, 'error')}")
    if args.out is not None:
        _write_table(rows, args.out)
        print(f"wrote {args.out}")
    return 0


def _write_table(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
