"""Speed of every registered method beside the model's own forward and forward+backward passes.

    python benchmarks/speed.py                                   # everything, on the CPU
    python benchmarks/speed.py --models shapes-vit --batches 1 --methods rollout saliency
    python benchmarks/speed.py --threads 1 --clock cpu           # on a machine shared with other jobs
    python benchmarks/speed.py --device cuda --steps 8

For each model and batch size it prints milliseconds per image of ``vitx.explain`` (the whole user call:
targets, tap, method, upsampling, scaling) and of the two baselines: forward under ``torch.no_grad`` and
forward+backward (the gradient of the target logits' sum with respect to the input, the work of one
gradient method step). The ratio compares a method that needs no gradients with the forward and every
other method with the forward+backward; a method whose cost is ``<param>×(...)`` in the registry
(integrated-gradients' steps, smoothgrad's samples) is divided by that count: its ratio is per step.
Targets from the issue: attention-only methods ≤ 1.2× forward, gradient methods ≤ 1.3× forward+backward
at batch 32. Each number is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones.
"""
from __future__ import annotations

import argparse
import ast
import re
import statistics
import time
from pathlib import Path

import torch

import vitx
from vitx.models import create_model
from vitx.registry import get_method, method_names

TARGETS = {"forward": 1.2, "forward+backward": 1.3}


def build(name: str) -> tuple[vitx.Model, str]:
    """The model to time and a note saying what it is and where its weights come from."""
    if name == "shapes-vit":
        if any(row["name"] == name and Path(row["file"]).exists() for row in vitx.models()):
            return vitx.load_model("shapes-vit"), "the zoo's trained vitx_shapes (64x64, 65 tokens)"
        return (vitx.load_model(create_model("vitx_shapes").eval()),
                "vitx_shapes with random weights (zoo file absent; 64x64, 65 tokens)")
    return (vitx.load_model(create_model("vit_base_patch16_224").eval()),
            "vit_base_patch16_224 with random weights (224x224, 197 tokens)")


def timed(fn, device: torch.device, warmup: int, repeats: int, clock=time.perf_counter) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start
    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeats))


def forward(model, x):
    with torch.no_grad():
        return model(x)


def forward_backward(model, x):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    return torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)[0]


def step_param(name: str) -> str | None:
    """The parameter that multiplies the method's cost ("steps" for "steps×(1F+1B)"), if any."""
    match = re.match(r"(\w+)×", get_method(name).cost)
    return match.group(1) if match else None


def parse_param(text: str) -> tuple[str, object]:
    """"name=value" -> (name, value), the value read as a Python literal where it is one."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--models", nargs="+", default=["shapes-vit", "vit-b16"], choices=["shapes-vit", "vit-b16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--methods", nargs="+", default=method_names(), choices=method_names(), metavar="METHOD")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps/samples for the multi-pass methods (default: each method's own default)")
    parser.add_argument("--param", nargs="+", default=[], metavar="NAME=VALUE",
                        help="set a parameter of every timed method that has it, e.g. internal_batch_size=32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (CPU only; with --threads 1 it is close to the "
                             "wall time of an idle machine and far less disturbed by other processes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU time: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    overrides = dict(parse_param(text) for text in args.param)
    torch.manual_seed(args.seed)
    print(f"vitx {vitx.__version__}, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads")
          + f"; {args.clock} clock, median of {args.repeats} after {args.warmup} warm-up")
    models = {name: build(name) for name in args.models}
    for name, (_, note) in models.items():
        print(f"{name}: {note}")
    print()
    print("| model | batch | method | ms/image | baseline | baseline ms/image | ratio | target | meets |")
    print("|---|---:|---|---:|---|---:|---:|---:|---|")
    for label, (model, _) in models.items():
        model = model.to(device)
        for batch in args.batches:
            x = torch.randn(batch, 3, *model.config.image_size, device=device)

            def per_image(fn) -> float:
                return timed(fn, device, args.warmup, args.repeats, clock) / batch
            base = {"forward": per_image(lambda: forward(model, x)),
                    "forward+backward": per_image(lambda: forward_backward(model, x))}
            for kind, seconds in base.items():
                print(f"| {label} | {batch} | *{kind}* | {seconds * 1e3:.2f} | | | | | |", flush=True)
            for name in args.methods:
                counted = step_param(name)
                defaults = get_method(name).defaults
                params = {**defaults, **{k: v for k, v in overrides.items() if k in defaults}}
                if counted and args.steps:
                    params[counted] = args.steps
                seconds = per_image(lambda: vitx.explain(model, x, name, **params))
                kind = "forward+backward" if "gradients" in get_method(name).needs else "forward"
                count = int(params[counted]) if counted else 1
                ratio = seconds / count / base[kind]
                per = f" per step of {count}" if count > 1 else ""
                meets = "yes" if ratio <= TARGETS[kind] else "no"
                print(f"| {label} | {batch} | {name} | {seconds * 1e3:.2f} | {kind}{per} | {base[kind] * 1e3:.2f} "
                      f"| {ratio:.2f} | ≤ {TARGETS[kind]} | {meets} |", flush=True)


if __name__ == "__main__":
    main()
