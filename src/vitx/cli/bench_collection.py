"""``vitx bench --collection SPEC``: methods scored on a collection with labels and masks, one ``--shard`` at a time,
per-image scores into ``--out`` (resumable); ``vitx bench --merge DIR``: the shards' leaderboard. Every argument,
every item's label and mask included, is checked before anything runs."""
from __future__ import annotations

import sys

from ..bench import leaderboard
from ..engines import open_collection, parse_shard
from ..engines.scores import merge, write_results
from ..engines.scoring import bench_collection, probe_data
from ..errors import VitxError
from ..evaluate import method_list
from ..loading import load_model
from .options import comma_list, method_params, output_dir


def run_bench_collection(args) -> int:
    shard = parse_shard(args.shard) if args.shard is not None else (0, 1)
    if args.score_threshold is not None:
        raise VitxError("--score-threshold applies to detectors, which the collection benchmark does not score")
    if args.engine != "ray" and (args.ray_address is not None or args.actors != 1):
        raise VitxError(f"{'--ray-address' if args.ray_address is not None else '--actors'} applies to --engine ray")
    if args.engine == "ray":
        from ..engines.ray_engine import require_ray
        require_ray()   # the extra's install command before any work
    collection = open_collection(args.collection)
    model = load_model(args.model, arch=args.arch, device=args.device)
    probe = probe_data(model)
    names = method_list(model, probe, "all" if args.methods == "all" else comma_list(args.methods))
    params = method_params(args.param, names, model, model.layout(probe.images[:1]), "benchmarked")
    metrics = None if args.metrics is None else comma_list(args.metrics)
    command = " ".join(["vitx bench --model", args.model, *(["--arch", args.arch] if args.arch else []),
                        "--collection", args.collection, "--methods", args.methods,
                        *(["--metrics", args.metrics] if args.metrics else []),
                        *(f"--param {m}.{k}={v!r}" for m, k, v in args.param), f"--seed {args.seed}",
                        f"--out {args.out}"])
    with output_dir(args.out) as out:
        options = dict(metrics=metrics, shard=shard, params=params, seed=args.seed, batch_size=args.batch_size,
                       command=command)
        if args.engine == "ray":
            from ..engines.ray_scoring import bench_ray   # Ray is an optional extra
            counts = bench_ray(model, collection, names, out, address=args.ray_address, actors=args.actors,
                               source=None if args.arch else args.model, **options)   # actors load it by name
        else:
            counts = bench_collection(model, collection, names, out, progress=True, **options)
    print(f"shard {shard[0]}/{shard[1]}: {counts['done']} (image, method) pairs scored, {counts['skipped']} done "
          f"before, {counts['errors']} failed" + (f" (see {out}/errors/)" if counts["errors"] else ""))
    if shard[1] == 1:
        show_merged(out)
    else:
        print(f"when every shard has run: vitx bench --merge {out}")
    return 1 if counts["errors"] else 0


def run_bench_merge(args) -> int:
    given = [flag for flag, value in (("--model", args.model), ("--collection", args.collection),
                                      ("--shard", args.shard), ("--out", args.out)) if value is not None]
    if given:
        raise VitxError(f"--merge DIR reads the shards a benchmark wrote in DIR and takes no {given[0]}")
    return show_merged(args.merge)


def show_merged(out) -> int:
    """Merge the shards in ``out`` into results.json and leaderboard.md, print the leaderboard and what is missing."""
    results = merge(out)
    files = write_results(out, results)
    print(f"{results['n']} images scored")
    print(leaderboard(results))
    for tag, shard in sorted(results["shards"].items()):
        if not shard["complete"]:
            print(f"vitx: warning: shard {tag} has not finished", file=sys.stderr)
    if results["incomplete"]:
        print(f"vitx: warning: {', '.join(results['incomplete'])} lack scores for some images (a shard still "
              "running, or failed images)", file=sys.stderr)
    if results["errors"]:
        print(f"vitx: warning: {results['errors']} images or (image, method) pairs failed: see {out}/errors/",
              file=sys.stderr)
    print(f"wrote {', '.join(path.name for path in files.values())} to {out}/")
    return 0
