"""Cost of issue 18's methods, each on the model it explains, against one forward of that model (docs/performance.md).

    python benchmarks/inherent.py --threads 1 --clock cpu --repeats 5
    python benchmarks/inherent.py --device cuda

For each method: the milliseconds per image of ``vitx.explain`` (the whole call: targets, tap, method, upsampling,
scaling) on a batch of fresh shapes images, the milliseconds per image of one forward of the same model under
``torch.no_grad`` on the same batch, their ratio, and the cost the registry states in forward (F) and backward (B)
passes. R-Cut's batched channel scoring against a per-channel loop is ``benchmarks/rcut.py``.
"""
from __future__ import annotations

import argparse

import torch

import vitx
from speed import forward, machine, timed, timing_options, timing_setup
from vitx.data import shapes
from vitx.registry import get_method

SUBJECTS = (("vit-net", "shapes-vit-net"), ("r-cut", "shapes-vit"), ("concept-transformer", "shapes-vit-concepts"),
            ("ex-vit", "shapes-vit-exvit"), ("dino-attention", "shapes-vit-dino"), ("dino-attention", "shapes-vit"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    timing_options(parser)
    args = parser.parse_args(argv)
    device, clock = timing_setup(parser, args)
    print(machine(device) + f"; {args.clock} clock, median of {args.repeats} after {args.warmup} warm-up, "
          f"batch {args.batch}\n")
    print("| method | model | registry cost | ms/image | forward ms/image | x one forward |")
    print("|---|---|---|---:|---:|---:|")
    images = shapes(args.batch, seed=30_000).images
    for method, name in SUBJECTS:
        model = vitx.load_model(name).to(device)
        x = model.normalize(images.to(device))
        once = timed(lambda: forward(model, x), device, args.warmup, args.repeats, clock) / args.batch
        call = timed(lambda: vitx.explain(model, x, method), device, args.warmup, args.repeats, clock) / args.batch
        print(f"| {method} | {name} | {get_method(method).cost} | {call * 1e3:.2f} | {once * 1e3:.2f} "
              f"| {call / once:.1f} |", flush=True)


if __name__ == "__main__":
    main()
