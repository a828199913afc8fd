"""NesT's generator against a convolutional one (Zhang et al., AAAI 2022, Sec. 4.4, claim: the transposed NesT
trains more easily than a comparable convolutional GAN).

    python studies/nest_gan.py                                        # the comparison in docs/nest.md
    python studies/nest_gan.py --steps 8 --fd-every 4 --out out/tiny  # a smoke run

Trains the recipes ``shapes-nest-gan`` (transposed NesT) and ``shapes-conv-gan`` (DCGAN's generator of the same
size) with ``vitx train``'s code: the same discriminator, loss, optimiser, batch size, number of steps and seed,
so the generator is the only difference. The Fréchet distance on ``shapes-vit`` features is recorded every
``--fd-every`` steps. Writes into ``--out`` both checkpoints with their cards, ``fd.png`` (FD against steps),
``samples_<recipe>.png`` (the same 32 latents for both), ``results.json`` and ``table.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitx import training
from vitx.checkpoint import read_metadata
from vitx.training.gan import load_generator, sample
from vitx.viz import tile

RECIPES = ("shapes-nest-gan", "shapes-conv-gan")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fd-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=Path("out/nest-gan"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(["python studies/nest_gan.py", *argv])
    results = {"command": command, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "runs": {}}
    for name in RECIPES:
        training.train(name, args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                       recipe=replace(training.RECIPES[name], fd_every=args.fd_every))
        meta = read_metadata(args.out / f"{name}.safetensors")
        generator, _ = load_generator(args.out / f"{name}.safetensors")
        tile(sample(generator, 32, seed=1)).save(args.out / f"samples_{name}.png")
        results["runs"][name] = {"fd_curve": meta["fd_curve"], "fd": meta["metrics"]["fd"],
                                 "parameters": sum(p.numel() for p in generator.parameters()),
                                 "seconds": meta["train_seconds"]}
    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, run in results["runs"].items():
        ax.plot(run["fd_curve"]["step"], run["fd_curve"]["fd"], "-o", markersize=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("Fréchet distance (shapes-vit features)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    FigureCanvasAgg(fig).print_png(str(args.out / "fd.png"))
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| generator | parameters | final FD | best FD (step) | minutes |", "|---|---:|---:|---:|---:|"]
    for name, run in results["runs"].items():
        curve = run["fd_curve"]
        best = min(zip(curve["fd"], curve["step"]), default=(float("nan"), 0))
        lines.append(f"| `{name}` | {run['parameters']:,} | {run['fd']:.2f} | {best[0]:.2f} ({best[1]}) | "
                     f"{run['seconds'] / 60:.1f} |")
    (args.out / "table.md").write_text(f"`{command}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
