"""Speed of the methods that apply to detectors, per explained object, beside the detector's own forward and
forward+backward passes per image.

    python benchmarks/detr.py                                   # shapes-detr, 32 images, on the CPU
    python benchmarks/detr.py --threads 1 --clock cpu           # on a machine shared with other jobs
    python benchmarks/detr.py --device cuda --batches 1 32

``vitx.explain(detr, x, method)`` explains every detection of the images x (score above 0.5): its milliseconds per
object, and per image (all of its objects); the baselines are the forward pass under ``torch.no_grad`` and the
forward+backward pass (the gradient of the best class logit of every query with respect to the images), per image.
Target (issue 14): ``generic-attention`` at most 1.3× forward+backward per object, at batch 32. Median of
``--repeats`` runs after ``--warmup``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vitx
from speed import (baseline_of, default_count, kind_methods, kind_options, machine, timed, timing_options,
                   timing_setup)
from vitx.models import create_model

TARGETS = {"generic-attention": 1.3}
NAME, ARCH = "shapes-detr", "detr_shapes"


def build() -> tuple[vitx.Model, float, str]:
    """The zoo detector and the score threshold 0.5, or its architecture with random weights and threshold 0 (every
    query not answering "no object") where the zoo file is absent."""
    if any(row["name"] == NAME and Path(row["file"]).exists() for row in vitx.models()):
        return vitx.load_model(NAME), 0.5, f"the zoo's trained {ARCH}"
    torch.manual_seed(0)
    return vitx.load_model(create_model(ARCH).eval()), 0.0, f"{ARCH} with random weights (no zoo file)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[32])
    kind_options(parser, "detectors")
    timing_options(parser)
    args = parser.parse_args(argv)
    device, clock = timing_setup(parser, args)
    methods = kind_methods(args, "detr")
    model, threshold, note = build()
    model = model.to(device)
    print(machine(device) + f"; {args.clock} clock, median of {args.repeats}; {note}")
    print("| batch | objects | method | ms/object | ms/image | baseline | baseline ms/image | ratio per object | target |")
    print("|---:|---:|---|---:|---:|---|---:|---:|---:|")
    for batch in args.batches:
        x = model.normalize(vitx.data.shapes(batch, seed=3, variant="multi").images.to(device))
        objects = len(vitx.explain(model, x, methods[0], score_threshold=threshold).objects)

        def forward():
            with torch.no_grad():
                model(x)

        def forward_backward():
            images = x.detach().requires_grad_(True)
            torch.autograd.grad(model(images)[..., :-1].amax(-1).sum(), images)
        base = {kind: timed(fn, device, args.warmup, args.repeats, clock) / batch
                for kind, fn in (("forward", forward), ("forward+backward", forward_backward))}
        for kind, seconds in base.items():
            print(f"| {batch} | | *{kind}* | | {seconds * 1e3:.3f} | | | | |", flush=True)
        for method in methods:
            count = default_count(method)
            seconds = timed(lambda: vitx.explain(model, x, method, score_threshold=threshold), device, args.warmup,
                            args.repeats, clock)
            kind, against = baseline_of(method, count)
            ratio = seconds / objects / count / base[kind]
            target = f"≤ {TARGETS[method]} ({'yes' if ratio <= TARGETS[method] else 'no'})" if method in TARGETS else ""
            print(f"| {batch} | {objects} | {method} | {seconds / objects * 1e3:.3f} | {seconds / batch * 1e3:.3f} | "
                  f"{against} | {base[kind] * 1e3:.3f} | {ratio:.2f} | {target} |", flush=True)


if __name__ == "__main__":
    main()
