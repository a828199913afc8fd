"""Throughput of the collection engines on one machine, in one run: images per second of

- ``explain``: ``vitx.explain`` on the images already decoded and preprocessed (the compute floor);
- ``local``: the in-process engine (:func:`vitx.engines.local.explain_collection`: files -> Parquet rows);
- ``ray``: the Ray engine with ``--actors`` actors on a local cluster (:func:`vitx.engines.ray_engine.run_ray`,
  files -> the same rows), timed on a cluster already up (worker processes, actor start and model load
  included), with the cluster's start beside it and, from the moments the batches of rows reach the driver, the
  time to the first rows and the rate after them (the engine's steady throughput);

and the ratio of each engine's time to the in-process engine's (its overhead). Rows are checked equal.

    OMP_NUM_THREADS=1 python benchmarks/engines.py                     # 500 shapes images, generic-attention
    OMP_NUM_THREADS=1 python benchmarks/engines.py --n 100 --methods raw-attention,generic-attention
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitx
from vitx.data import shapes
from vitx.engines import read_rows
from vitx.engines.local import explain_collection
from vitx.engines import ray_engine
from vitx.engines.ray_engine import connected, require_ray, run_ray


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    data = shapes(n, seed=0)
    for i in range(n):
        pixels = (data.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def arrival_clock(module) -> list[tuple[float, int]]:
    """Patch ``module.write_batch`` (the driver's writer) to record (``time.perf_counter()``, rows) for each batch
    of rows reaching the driver."""
    arrivals, write = [], module.write_batch

    def clocked(batch, *args):
        arrivals.append((time.perf_counter(), batch.num_rows))
        return write(batch, *args)

    module.write_batch = clocked
    return arrivals


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--model", default="shapes-vit")
    parser.add_argument("--methods", default="generic-attention")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    methods = args.methods.split(",")
    ray = require_ray()
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp, "images")
        write_images(images, args.n)
        model = vitx.load_model(args.model)
        x = model.preprocess(sorted(images.iterdir()))
        seconds = {"explain": timed(lambda: [vitx.explain(model, x, method=m, batch_size=args.batch_size)
                                             for m in methods])[0]}
        seconds["local"], local = timed(lambda: explain_collection(model, str(images), methods, Path(tmp, "local"),
                                                                   batch_size=args.batch_size))
        start = time.perf_counter()
        with connected(ray, None):
            started = time.perf_counter() - start
            arrivals = arrival_clock(ray_engine)
            ray_start = time.perf_counter()
            seconds["ray"], counts = timed(lambda: run_ray(str(images), args.model, methods, Path(tmp, "ray"),
                                                           actors=args.actors, batch_size=args.batch_size))
        assert counts == local, (counts, local)
        a, b = (sorted(read_rows(Path(tmp, out)).to_pylist(), key=lambda r: (r["key"], r["method"]))
                for out in ("local", "ray"))
        assert all(np.allclose(r["map"], s["map"], atol=1e-5) for r, s in zip(a, b)), "the engines' maps differ"
    rows, n_local = args.n * len(methods), args.n / seconds["local"]
    print(f"vitx {vitx.__version__}, torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{args.n} {args.model} images x {', '.join(methods)} = {rows} rows, batch {args.batch_size}, "
          f"{args.actors} actor{'s' * (args.actors != 1)}; maps equal across engines")
    print("| engine | seconds | images/s | time / local |\n|---|---:|---:|---:|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.1f} | {args.n / s:.1f} | {s / seconds['local']:.2f} |")
    first, after = arrivals[0][0] - ray_start, sum(n for _, n in arrivals[1:])
    steady = after / (arrivals[-1][0] - arrivals[0][0]) / len(methods) if after else float("nan")
    print(f"ray: cluster start (ray.init) {started:.1f} s, not in the ray row; first rows at the driver after "
          f"{first:.1f} s (worker processes, actor, model load, first batch); then {steady:.1f} images/s "
          f"({len(arrivals)} batches at the driver, {n_local / steady:.2f}x local's time per image)")


if __name__ == "__main__":
    main()
