"""The tap and the methods on one model of each family at 224 px, random weights (issue 21).

    python benchmarks/families.py                         # every family of tests/families.py, on the CPU
    python benchmarks/families.py --families swin eva --batch 4 --device cuda

Per family (its default configuration, as tests/families.py builds it) it prints milliseconds per image of
the model's own forward under ``torch.no_grad``, the same forward with ``vitx.trace`` open (every block's
attention and tokens recorded), and their ratio; then ``vitx.explain`` with generic-attention (saliency where
generic-attention does not apply to the family, as the support table says) against the forward+backward
baseline of speed.py (the input gradient of the target logits). Each number is the median of ``--repeats``
runs after ``--warmup`` untimed ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import vitx
from speed import forward, forward_backward, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from families import catalog  # noqa: E402  (the catalog lives with the tests it serves)


def traced_forward(model, x):
    with torch.no_grad(), vitx.trace(model):
        return model(x)


def explained_method(model, x) -> str:
    """generic-attention where it applies to the model, else saliency."""
    try:
        vitx.registry.get_method("generic-attention").check_model(model, model.layout(x))
    except vitx.VitxError:
        return "saliency"
    return "generic-attention"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=[], help="substrings of family names (default: all)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"{args.batch} images of 224x224 per call on {device}; ms per image, median of {args.repeats}")
    print(f"{'family':58} {'forward':>8} {'tap':>8} {'ratio':>6}  {'method':17} {'fwd+bwd':>8} {'method':>8} {'ratio':>6}")
    for family in catalog():
        if args.families and not any(s.lower() in family.name.lower() for s in args.families):
            continue
        try:
            model = vitx.load_model(family.build_224().eval(), device=device)
        except vitx.VitxError as err:           # a framework version whose layout the adapter does not read
            print(f"{family.name[:58]:58} refused: {err}", flush=True)
            continue
        size = model.config.image_size if not model.config.dynamic_size else (224, 224)
        x = torch.randn(args.batch, 3, *size, device=device)
        method = explained_method(model, x)
        ms = {what: timed(fn, device, args.warmup, args.repeats) * 1000 / args.batch for what, fn in {
            "forward": lambda: forward(model, x), "tap": lambda: traced_forward(model, x),
            "forward+backward": lambda: forward_backward(model, x),
            "method": lambda: vitx.explain(model, x, method, batch_size=args.batch)}.items()}
        print(f"{family.name[:58]:58} {ms['forward']:8.1f} {ms['tap']:8.1f} {ms['tap'] / ms['forward']:6.2f}  "
              f"{method:17} {ms['forward+backward']:8.1f} {ms['method']:8.1f} "
              f"{ms['method'] / ms['forward+backward']:6.2f}", flush=True)
        del model, x


if __name__ == "__main__":
    main()
