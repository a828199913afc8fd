"""Speed of every registered method beside the model's own forward and forward+backward passes.

    python benchmarks/speed.py                                   # everything, on the CPU
    python benchmarks/speed.py --models shapes-vit --batches 1 --methods rollout saliency
    python benchmarks/speed.py --threads 1 --clock cpu           # on a machine shared with other jobs
    python benchmarks/speed.py --device cuda --steps 8
    python benchmarks/speed.py --models vit-b16 --threads 1 --clock cpu --memory \
        --methods lrp transformer-attribution partial-lrp attnlrp --batches 1 8 \
        --method-batches transformer-attribution=1,8,32          # the relevance methods (issue 22)

For each model and batch size it prints milliseconds per image of ``vitx.explain`` (the whole user call:
targets, tap, method, upsampling, scaling) and of the two baselines: forward under ``torch.no_grad`` and
forward+backward (the gradient of the target logits' sum with respect to the input, the work of one
gradient method step). The ratio compares a method that needs no gradients with the forward and every
other method with the forward+backward; a method whose cost is ``<param>×(...)`` in the registry
(integrated-gradients' steps, smoothgrad's samples) is divided by that count: its ratio is per step.
Targets: attention-only methods ≤ 1.2× forward, gradient methods ≤ 1.3× forward+backward at batch 32
(issue 3); transformer-attribution ≤ 2.0×, lrp, partial-lrp and attnlrp ≤ 2.5× (issue 22). Each number
is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones.

``--memory`` adds each call's peak memory per image beside its baseline's at the same batch (target for
transformer-attribution: ≤ 2×). On the CPU each figure is measured in a fresh process, the peak resident
set (VmHWM of /proc/self/status, reset by writing 5 to /proc/self/clear_refs once the model and images are
built) minus the resident set before the call; on CUDA it is torch.cuda.max_memory_allocated minus the
memory allocated before the call.
"""
from __future__ import annotations

import argparse
import ast
import ctypes
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import vitx
from vitx.models import create_model
from vitx.registry import get_method, method_names

TARGETS = {"forward": 1.2, "forward+backward": 1.3}
METHOD_TARGETS = {"transformer-attribution": 2.0, "lrp": 2.5, "partial-lrp": 2.5, "attnlrp": 2.5}
MEMORY_TARGETS = {"transformer-attribution": 2.0}
BASELINES = ("forward", "forward+backward")


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


def resident_kb(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in kB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_bytes(fn, device: torch.device) -> int:
    """Memory the call ``fn()`` adds at its peak: on CUDA from the allocator's statistics, on the CPU from
    the peak resident set (reset first, after handing the heap that earlier calls freed back to the system, so
    that the peak counts every page the call touches; meaningful in a process that runs nothing else)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = resident_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    fn()
    return (resident_kb("VmHWM") - before) * 1024


def step_param(name: str) -> str | None:
    """The parameter that multiplies the method's cost ("steps" for "steps×(1F+1B)"), if any."""
    match = re.match(r"(\w+)×", get_method(name).cost)
    return match.group(1) if match else None


def default_count(name: str) -> int:
    """The count the method's registry cost multiplies at its default parameters (1 if none)."""
    counted = step_param(name)
    return int(get_method(name).defaults[counted]) if counted else 1


def baseline_of(name: str, count: int) -> tuple[str, str]:
    """The baseline a method's time is set against ("forward", or "forward+backward" for a gradient method) and its
    label in a table ("... per step of N" where the cost counts ``count`` steps)."""
    kind = "forward+backward" if "gradients" in get_method(name).needs else "forward"
    return kind, kind + (f" per step of {count}" if count > 1 else "")


def parse_param(text: str) -> tuple[str, object]:
    """"name=value" -> (name, value), the value read as a Python literal where it is one."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def parse_batches(text: str) -> tuple[str, list[int]]:
    """"name=1,8,32" -> (name, [1, 8, 32])."""
    name, _, sizes = text.partition("=")
    if name not in method_names():
        raise argparse.ArgumentTypeError(f"unknown method {name!r}")
    return name, [int(size) for size in sizes.split(",")]


def method_params(name: str, args, overrides: dict) -> tuple[dict, int]:
    """The method's parameters for this run, and the count its registry cost multiplies (1 if none)."""
    counted = step_param(name)
    defaults = get_method(name).defaults
    params = {**defaults, **{k: v for k, v in overrides.items() if k in defaults}}
    if counted and args.steps:
        params[counted] = args.steps
    return params, int(params[counted]) if counted else 1


def work(what: str, model, x, params: dict):
    """The call to measure: a baseline or ``vitx.explain`` with ``what`` as the method."""
    if what == "forward":
        return lambda: forward(model, x)
    if what == "forward+backward":
        return lambda: forward_backward(model, x)
    return lambda: vitx.explain(model, x, what, **params)


def peak_in_fresh_process(argv: list[str], what: str, label: str, batch: int) -> int:
    """:func:`peak_bytes` of one call, measured in a new process of this script with this run's options.
    This process first hands the heap its timed calls freed back to the system (glibc keeps it otherwise),
    so that the two together fit in the machine's memory."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    command = [sys.executable, __file__, *argv, "--peak-of", what, "--models", label, "--batches", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"peak memory of {what} at batch {batch} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.split()[-1])


def kind_options(parser: argparse.ArgumentParser, models: str) -> None:
    """--device, and --methods (default: every method that applies to ``models``, e.g. "detectors")."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help=f"default: every method that applies to {models}")


def kind_methods(args, kind: str) -> list[str]:
    """The methods --methods names, or every method registered for model kind ``kind``."""
    return args.methods or [name for name in method_names() if kind in get_method(name).kinds]


def timing_options(parser: argparse.ArgumentParser) -> None:
    """The options of how a benchmark times its calls: --repeats, --warmup, --threads, --clock."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this process's CPU time (CPU only; with --threads 1 it is close to the "
                             "wall time of an idle machine and far less disturbed by other processes)")


def timing_setup(parser: argparse.ArgumentParser, args) -> tuple[torch.device, object]:
    """(device, clock) from ``args.device`` and :func:`timing_options`' values; torch's threads set; --clock cpu
    refused on another device."""
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU time: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    return device, time.process_time if args.clock == "cpu" else time.perf_counter


def machine(device: torch.device) -> str:
    """vitx's and torch's versions and the device (a GPU's name, or the CPU threads), for a benchmark's first line."""
    return (f"vitx {vitx.__version__}, torch {torch.__version__}, device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
               f", {torch.get_num_threads()} threads"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--models", nargs="+", default=["shapes-vit", "vit-b16"], choices=["shapes-vit", "vit-b16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--method-batches", nargs="+", type=parse_batches, default=[], metavar="METHOD=B,B,...",
                        help="other batch sizes for a method, e.g. transformer-attribution=1,8,32")
    parser.add_argument("--methods", nargs="+", default=method_names(), choices=method_names(), metavar="METHOD")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps/samples for the multi-pass methods (default: each method's own default)")
    parser.add_argument("--param", nargs="+", default=[], metavar="NAME=VALUE",
                        help="set a parameter of every timed method that has it, e.g. internal_batch_size=32")
    timing_options(parser)
    parser.add_argument("--memory", action="store_true", help="also the peak memory per image of every call")
    parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)   # one measurement, in a child process
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device, clock = timing_setup(parser, args)
    overrides = dict(parse_param(text) for text in args.param)
    torch.manual_seed(args.seed)
    if args.peak_of:
        model = build(args.models[0])[0].to(device)
        x = torch.randn(args.batches[0], 3, *model.config.image_size, device=device)
        params = method_params(args.peak_of, args, overrides)[0] if args.peak_of not in BASELINES else {}
        print(peak_bytes(work(args.peak_of, model, x, params), device))
        return
    child_argv = ["--device", args.device, "--seed", str(args.seed), *(["--threads", str(args.threads)] if args.threads
                  else []), *(["--steps", str(args.steps)] if args.steps else []),
                  *(["--param", *args.param] if args.param else [])]
    per_method = dict(args.method_batches)
    batches = sorted({b for name in args.methods for b in per_method.get(name, args.batches)})
    print(machine(device) + f"; {args.clock} clock, median of {args.repeats} after {args.warmup} warm-up"
          + ("; peak memory per call" + (" in a fresh process (VmHWM)" if device.type == "cpu" else "")
             if args.memory else ""))
    models = {name: build(name) for name in args.models}
    for name, (_, note) in models.items():
        print(f"{name}: {note}")
    print()
    memory_columns = " MB/image | baseline MB/image | memory ratio | memory target |" if args.memory else ""
    print("| model | batch | method | ms/image | baseline | baseline ms/image | ratio | target | meets |" + memory_columns)
    print("|---|---:|---|---:|---|---:|---:|---:|---|" + ("---:|---:|---:|---:|" if args.memory else ""))
    for label, (model, _) in models.items():
        model = model.to(device)
        for batch in batches:
            x = torch.randn(batch, 3, *model.config.image_size, device=device)

            def per_image(fn) -> float:
                return timed(fn, device, args.warmup, args.repeats, clock) / batch

            def peak_per_image(what: str, params: dict) -> float:
                if device.type == "cuda":
                    return peak_bytes(work(what, model, x, params), device) / batch
                return peak_in_fresh_process(child_argv, what, label, batch) / batch
            base = {kind: per_image(work(kind, model, x, {})) for kind in BASELINES}
            base_memory = {kind: peak_per_image(kind, {}) for kind in BASELINES} if args.memory else {}
            for kind, seconds in base.items():
                memory = f" {base_memory[kind] / 2**20:.1f} | | | |" if args.memory else ""
                print(f"| {label} | {batch} | *{kind}* | {seconds * 1e3:.2f} | | | | | |" + memory, flush=True)
            for name in args.methods:
                if batch not in per_method.get(name, args.batches):
                    continue
                params, count = method_params(name, args, overrides)
                memory = peak_per_image(name, params) if args.memory else None   # before the timed calls: see above
                seconds = per_image(work(name, model, x, params))
                kind, against = baseline_of(name, count)
                ratio = seconds / count / base[kind]
                target = METHOD_TARGETS.get(name, TARGETS[kind])
                row = (f"| {label} | {batch} | {name} | {seconds * 1e3:.2f} | {against} | {base[kind] * 1e3:.2f} "
                       f"| {ratio:.2f} | ≤ {target} | {'yes' if ratio <= target else 'no'} |")
                if args.memory:
                    memory_ratio = memory / base_memory[kind]
                    goal = MEMORY_TARGETS.get(name)
                    meets = "" if goal is None else f"≤ {goal} ({'yes' if memory_ratio <= goal else 'no'})"
                    row += f" {memory / 2**20:.1f} | {base_memory[kind] / 2**20:.1f} | {memory_ratio:.2f} | {meets} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
