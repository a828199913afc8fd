"""How one method's localisation on shapes depends on its settings: is a weak score the method or its defaults?

    python studies/method_settings.py --method vit-cx --settings "" block=0 block=1 distance_threshold=0.4

Each setting (``NAME=VALUE[,NAME=VALUE...]``, values read as Python literals; ``""`` for the defaults) is one row:
the method run on the same ``--n`` fresh single-object images (data seed 20,000, as in ``tests/test_quality.py``)
for their true class, scored by the strict and the tolerant pointing game and the energy pointing game
(``vitx.metrics``), mean ± standard error over the images. Prints a markdown table.
"""
from __future__ import annotations

import argparse

import torch

import vitx
from vitx.cli import literal
from vitx.data import shapes
from vitx.metrics import energy_pointing_game, pointing_game, pointing_game_tolerant

METRICS = {"pointing game": pointing_game, "pointing game, tolerant": pointing_game_tolerant,
           "energy pointing game": energy_pointing_game}


def setting(text: str) -> dict:
    """"a=1,b=x" -> {"a": 1, "b": "x"}; "" -> {}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
    return {name: literal(value) for name, value in pairs}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--settings", nargs="+", type=setting, default=[{}])
    parser.add_argument("--model", default="shapes-vit")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vitx.load_model(args.model)
    data = shapes(n=args.n, seed=20_000, variant="single")
    x = model.preprocess(data.images)
    print(f"| {args.method} settings | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for params in args.settings:
        exp = vitx.explain(model, x, args.method, target=data.labels, batch_size=args.batch_size, **params)
        cells = []
        for metric in METRICS.values():
            scores = metric(exp.maps, data.masks)
            cells.append(f"{scores.mean():.3f} ± {scores.std() / len(scores) ** 0.5:.3f}")
        label = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
