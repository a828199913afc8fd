"""Data efficiency of NesT against ViT (Zhang et al., AAAI 2022, claim: NesT learns faster and from less data).

    python studies/data_efficiency.py                               # the study in docs/nest.md
    python studies/data_efficiency.py --steps 20 --train-size 256 --seeds 0 --out out/tiny   # a smoke run

One fixed training set of ``--train-size`` shapes images (data seed 2,000,000, apart from the zoo's training
seeds and the test seeds); ``nest_shapes`` and ``vitx_shapes`` (the zoo's architectures, of similar parameter
count) are trained on its first 10%, 30% and 100% for the same number of steps at the same batch size, from
each seed of ``--seeds``, so the smaller subsets are seen for more epochs. Every ``--eval-every`` steps the test
accuracy on ``--test-size`` fresh images (data seed 10,000) is recorded. Both use AdamW with the zoo's schedule
(5% linear warm-up, cosine decay), learning rate 1e-3, weight decay 0.05, gradient clipping at 1, no
augmentation; the ViT starts from its mimetic initialisation, as the zoo's, NesT from its own.

Writes ``results.json`` (every curve), ``curves.png`` (mean test accuracy against epochs per architecture and
subset, seeds shaded min-max) and ``table.md`` (final accuracy, mean ± std over seeds) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitx.data import shapes
from vitx.models import VisionTransformer, create_model
from vitx.training.classifier import mimetic_init
from vitx.training.recipes import MEAN, STD
from vitx.training.run import _warmup_cosine

ARCHS = ("nest_shapes", "vitx_shapes")
FRACTIONS = (0.1, 0.3, 1.0)
TRAIN_SEED, TEST_SEED = 2_000_000, 10_000


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def accuracy(net, x: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    net.eval()
    hits = sum((net(x[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    net.train()
    return hits / len(x)


def run(arch: str, x: torch.Tensor, labels: torch.Tensor, test: tuple, seed: int, steps: int, batch: int,
        eval_every: int) -> dict:
    """Train ``arch`` on (x, labels) for ``steps`` steps; the test accuracy curve against steps and epochs."""
    torch.manual_seed(seed)
    net = create_model(arch)
    if isinstance(net, VisionTransformer):
        mimetic_init(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(steps, 0.05))
    order = torch.Generator().manual_seed(seed)
    perm, cursor, seen = torch.randperm(len(x), generator=order), 0, 0
    curve = {"step": [], "epoch": [], "accuracy": []}
    net.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if cursor + batch > len(x):                    # a new epoch: reshuffle
            perm, cursor = torch.randperm(len(x), generator=order), 0
        index = perm[cursor:cursor + min(batch, len(x))]
        cursor, seen = cursor + len(index), seen + len(index)
        loss = F.cross_entropy(net(x[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % eval_every == 0 or step == steps:
            curve["step"].append(step)
            curve["epoch"].append(round(seen / len(x), 3))
            curve["accuracy"].append(accuracy(net, *test))
    curve["seconds"] = round(time.perf_counter() - start, 1)
    curve["parameters"] = sum(p.numel() for p in net.parameters())
    return curve


def plot(results: dict, path: Path) -> None:
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(results["fractions"]), squeeze=False)[0]
    for ax, fraction in zip(axes, results["fractions"]):
        for arch, colour in zip(results["archs"], ("tab:red", "tab:blue")):
            runs = [results["runs"][arch][str(fraction)][str(seed)] for seed in results["seeds"]]
            epochs = runs[0]["epoch"]
            curves = np.array([r["accuracy"] for r in runs])
            ax.plot(epochs, curves.mean(0), color=colour, label=arch)
            ax.fill_between(epochs, curves.min(0), curves.max(0), color=colour, alpha=0.2)
        ax.set_title(f"{fraction:.0%} of {results['train_size']:,} images", fontsize=10)
        ax.set_xlabel("epochs")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    FigureCanvasAgg(fig).print_png(str(path))


def table(results: dict) -> str:
    lines = ["| architecture | parameters | " + " | ".join(f"{f:.0%} ({round(f * results['train_size']):,} images)"
                                                          for f in results["fractions"]) + " |",
             "|---|---:|" + "---:|" * len(results["fractions"])]
    for arch in results["archs"]:
        cells = []
        for fraction in results["fractions"]:
            runs = results["runs"][arch][str(fraction)]
            final = np.array([runs[str(seed)]["accuracy"][-1] for seed in results["seeds"]])
            cells.append(f"{final.mean():.3f} ± {final.std():.3f}")
        parameters = next(iter(results["runs"][arch][str(results["fractions"][0])].values()))["parameters"]
        lines.append(f"| `{arch}` | {parameters:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=Path("out/data-efficiency"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = shapes(n=args.train_size, seed=TRAIN_SEED)
    x, labels = normalise(data.images), data.labels
    held_out = shapes(n=args.test_size, seed=TEST_SEED)
    test = normalise(held_out.images), held_out.labels
    results = {"command": " ".join(["python studies/data_efficiency.py", *argv]), "train_size": args.train_size,
               "test_size": args.test_size, "steps": args.steps, "batch_size": args.batch_size,
               "fractions": args.fractions, "seeds": args.seeds, "archs": args.archs, "runs": {}}
    for arch in args.archs:
        for fraction in args.fractions:
            size = max(1, math.floor(fraction * args.train_size))
            for seed in args.seeds:
                curve = run(arch, x[:size], labels[:size], test, seed, args.steps, args.batch_size, args.eval_every)
                results["runs"].setdefault(arch, {}).setdefault(str(fraction), {})[str(seed)] = curve
                print(f"{arch} {fraction:.0%} seed {seed}: accuracy {curve['accuracy'][-1]:.3f} "
                      f"({curve['seconds']:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "curves.png")
    (args.out / "table.md").write_text(f"`{results['command']}`\n\n{table(results)}\n")
    print(table(results))


if __name__ == "__main__":
    main()
