"""Speed of the methods that apply to bi-modal (VQA) models, per (image, question) pair, beside the model's own
forward and forward+backward passes.

    python benchmarks/vqa.py                                    # both zoo VQA models, batch 32, on the CPU
    python benchmarks/vqa.py --threads 1 --clock cpu            # on a machine shared with other jobs
    python benchmarks/vqa.py --device cuda --batches 1 32

Per pair: milliseconds of ``vitx.explain(model, x, text=questions, method=...)`` (the whole user call) and of the
baselines, forward under ``torch.no_grad`` and forward+backward (the gradient of the target logits' sum with
respect to the images). Target (issue 13): ``generic-attention`` at most 1.3× forward+backward at batch 32; the
other methods' ratios are printed beside it (per step for integrated-gradients). Median of ``--repeats`` runs
after ``--warmup``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vitx
from speed import baseline_of, default_count, machine, timed, timing_options, timing_setup
from vitx.models import create_model
from vitx.registry import get_method, method_names

TARGETS = {"generic-attention": 1.3}
MODELS = {"shapes-vqa-single": "vqa_shapes_single", "shapes-vqa-dual": "vqa_shapes_dual"}


def build(name: str) -> tuple[vitx.Model, str]:
    """The zoo model, or its architecture with random weights where the zoo file is absent."""
    if any(row["name"] == name and Path(row["file"]).exists() for row in vitx.models()):
        return vitx.load_model(name), f"the zoo's trained {MODELS[name]}"
    torch.manual_seed(0)
    return vitx.load_model(create_model(MODELS[name]).eval()), f"{MODELS[name]} with random weights (no zoo file)"


def bimodal_methods() -> list[str]:
    return [name for name in method_names() if "vqa" in get_method(name).kinds]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[32])
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="default: every method that applies to VQA models")
    timing_options(parser)
    args = parser.parse_args(argv)
    device, clock = timing_setup(parser, args)
    methods = args.methods or bimodal_methods()
    print(machine(device) + f"; {args.clock} clock, median of {args.repeats}")
    print("| model | batch | method | ms/pair | baseline | baseline ms/pair | ratio | target |")
    print("|---|---:|---|---:|---|---:|---:|---:|")
    for name in args.models:
        model, note = build(name)
        model = model.to(device)
        print(f"<!-- {name}: {note} -->")
        for batch in args.batches:
            data = vitx.data.shapes_vqa(batch, seed=3)
            x, questions = model.normalize(data.images.to(device)), list(data.questions)
            text = model.encode_text(questions).to(device)

            def per_pair(fn) -> float:
                return timed(fn, device, args.warmup, args.repeats, clock) / batch

            def forward():
                with torch.no_grad():
                    model(x, text)

            def forward_backward():
                images = x.detach().requires_grad_(True)
                logits = model(images, text)
                torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), images)
            base = {"forward": per_pair(forward), "forward+backward": per_pair(forward_backward)}
            for kind, seconds in base.items():
                print(f"| {name} | {batch} | *{kind}* | {seconds * 1e3:.3f} | | | | |", flush=True)
            for method in methods:
                count = default_count(method)
                seconds = per_pair(lambda: vitx.explain(model, x, method, text=questions))
                kind, against = baseline_of(method, count)
                ratio = seconds / count / base[kind]
                target = f"≤ {TARGETS[method]} ({'yes' if ratio <= TARGETS[method] else 'no'})" if method in TARGETS else ""
                print(f"| {name} | {batch} | {method} | {seconds * 1e3:.3f} | {against} | {base[kind] * 1e3:.3f} | "
                      f"{ratio:.2f} | {target} |", flush=True)


if __name__ == "__main__":
    main()
