"""``vitx bench``: every method on the same fresh shapes images, scored by every metric (a bi-modal model: on fresh
``shapes_vqa`` (image, question) pairs, scored on both modalities; an image-text model: fresh ``shapes_captions``
images, each with the prompts naming two of its objects; a detector: every detection of fresh multi-object
images, its map scored as a weak segmentation of its object); every argument, each ``--param`` value included, is
checked before anything runs or is written."""
from __future__ import annotations

import sys

from .. import bench
from ..data import shapes, shapes_captions, shapes_vqa
from ..errors import VitxError
from ..evaluate import evaluate, method_list, metric_list
from ..loading import load_model
from ..objects import refuse_threshold
from .bench_collection import run_bench_collection, run_bench_merge
from .options import comma_list, method_params, output_dir


def run_bench(args) -> int:
    if args.merge is not None:
        return run_bench_merge(args)
    missing = [flag for flag, value in (("--model", args.model), ("--out", args.out)) if value is None]
    if missing:
        raise VitxError(f"the following arguments are required: {', '.join(missing)} (see `vitx bench --help`)")
    if args.seed < 0:
        raise VitxError(f"--seed must be 0 or more, got {args.seed}")
    if args.collection is not None:
        return run_bench_collection(args)
    for flag, given in (("--shard", args.shard is not None), ("--engine", args.engine != "local"),
                        ("--ray-address", args.ray_address is not None), ("--actors", args.actors != 1)):
        if given:
            raise VitxError(f"{flag} applies to --collection runs only")
    methods = "all" if args.methods == "all" else comma_list(args.methods)
    metrics = None if args.metrics is None else comma_list(args.metrics)
    model = load_model(args.model, arch=args.arch, device=args.device)
    threshold = args.score_threshold
    refuse_threshold(model, threshold, "--score-threshold")
    size = model.config.image_size
    if size[0] != size[1]:
        raise VitxError(f"vitx bench draws square shapes images; this model takes {size[0]}x{size[1]}")
    if model.image_text:
        data = shapes_captions(n=args.n, seed=args.seed, image_size=size[0])
    elif model.bimodal:
        data = shapes_vqa(n=args.n, seed=args.seed, image_size=size[0])
    else:
        multi = model.config.multi_label or model.detector
        data = shapes(n=args.n, seed=args.seed, variant="multi" if multi else "single", image_size=size[0])
    methods, metrics = method_list(model, data, methods), metric_list(data, metrics, model.detector)
    params = method_params(args.param, methods, model, model.layout(data.images[:1]), "benchmarked")
    command = " ".join(["vitx bench --model", args.model, *(["--arch", args.arch] if args.arch else []),
                        "--methods", args.methods, *(["--metrics", args.metrics] if args.metrics else []),
                        *(f"--param {m}.{k}={v!r}" for m, k, v in args.param),
                        f"--n {args.n} --seed {args.seed}",
                        *([] if threshold is None else [f"--score-threshold {threshold:g}"]),
                        *([] if model.bimodal or model.detector else [f"--sanity-images {args.sanity_images}"]),
                        f"--out {args.out}"])
    with output_dir(args.out) as out:
        previous = bench.read(out) if args.resume else None
        evaluation = evaluate(model, data, methods, metrics, params=params, batch_size=args.batch_size,
                              seed=args.seed, sanity_images=args.sanity_images, score_threshold=threshold,
                              previous=previous, progress=True,
                              scored=lambda so_far: bench.save_rows(so_far, out, command))
        files = bench.write(evaluation, out, command)
    print(bench.leaderboard(evaluation.results))
    failed = [name for name, row in evaluation.results["methods"].items() if "error" in row]
    for name in failed:
        print(f"vitx: {name} failed: {evaluation.results['methods'][name]['error']}", file=sys.stderr)
    print(f"wrote {', '.join(path.name for path in files.values())} to {out}/")
    return 1 if failed else 0
