"""Seconds of the collection benchmark beside the in-memory ``vitx.evaluate`` on the same shapes images.

    python benchmarks/collection_bench.py --n 64 --methods raw-attention
    python benchmarks/collection_bench.py --n 128 --methods raw-attention,generic-attention \\
        --metrics pointing_game,miou,map,energy_pointing_game,sparseness,perturbation_positive_auc

Writes N shapes images and their masks as PNG files and a Parquet table into a temporary folder, then times, in
this one process: ``vitx.evaluate`` on the images' 8-bit pixels in memory, ``vitx.engines.scoring.bench_collection``
on the table (decode, score, write the per-image rows), a rerun of it (everything done: the resume cost) and
``vitx.evaluate`` again (the spread between the two in-memory runs is the machine's noise). Without ``--metrics``
both score every per-image metric (the in-memory run adds the randomisation check on one image). ``--ray``: also
``vitx.engines.ray_scoring.bench_ray`` with one actor on a local cluster (127.0.0.1, two CPUs), timed once the
cluster is up, so that the ratio is the engine's own overhead.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import vitx
from vitx.data import shapes
from vitx.engines.scoring import bench_collection


def write_collection(root: Path, data) -> torch.Tensor:
    """The images and masks as PNG files and table.parquet under ``root``; the images' 8-bit pixels."""
    pixels = (data.images * 255).round().to(torch.uint8)
    rows = []
    for i in range(len(data)):
        Image.fromarray(pixels[i].permute(1, 2, 0).numpy()).save(root / f"{i:05d}.png")
        Image.fromarray(data.masks[i].numpy().astype(np.uint8) * 255).save(root / f"{i:05d}_mask.png")
        rows.append({"path": f"{i:05d}.png", "label": int(data.labels[i]), "mask": f"{i:05d}_mask.png"})
    pq.write_table(pa.Table.from_pylist(rows), root / "table.parquet")
    return pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--methods", default="raw-attention")
    parser.add_argument("--metrics", help="comma-separated (default: every per-image metric)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray", action="store_true", help="also time the Ray engine (one actor, a local cluster)")
    args = parser.parse_args()
    methods, metrics = args.methods.split(","), args.metrics.split(",") if args.metrics else None
    model = vitx.load_model("shapes-vit")
    data = shapes(n=args.n, seed=11)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = dataclasses.replace(data, images=write_collection(root, data).float() / 255)

        def timed(run) -> float:
            start = time.perf_counter()
            run()
            return time.perf_counter() - start

        def memory():
            vitx.evaluate(model, data, methods, metrics, batch_size=args.batch_size,
                          sanity_images=None if metrics else 1)

        def collection():
            bench_collection(model, str(root / "table.parquet"), methods, root / "out", metrics=metrics,
                             batch_size=args.batch_size)

        first, bench, rerun, second = timed(memory), timed(collection), timed(collection), timed(memory)
        if args.ray:
            import ray

            from vitx.engines.ray_scoring import bench_ray
            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                     logging_level="WARNING")
            remote = timed(lambda: bench_ray(model, str(root / "table.parquet"), methods, root / "ray",
                                             metrics=metrics, batch_size=args.batch_size, source="shapes-vit"))
            ray.shutdown()
            print(f"Ray, one actor: {remote:.1f} s ({args.n / remote:.1f} images/s, {remote / bench:.2f} x the "
                  "in-process collection bench; the actor's model load included)")
    print(f"{args.n} images, {', '.join(methods)}, {args.metrics or 'every per-image metric'}: in-memory evaluate "
          f"{first:.1f} s and {second:.1f} s; collection bench {bench:.1f} s ({args.n / bench:.1f} images/s, "
          f"{bench / ((first + second) / 2):.2f} x in-memory); rerun with everything done {rerun:.2f} s")


if __name__ == "__main__":
    main()
