"""Share of ``vitx bench`` time spent outside the model's own forward and backward passes.

    python benchmarks/bench_overhead.py                        # shapes-vit, every method, 100 images
    python benchmarks/bench_overhead.py --n 200 --methods generic-attention,random --threads 2

Runs ``vitx.evaluate`` (the engine of ``vitx bench``) one method at a time and, in the same run, times
every forward pass of the network (a forward pre-hook and hook on it) and every backward pass (calls of
``torch.autograd.grad``, wrapped for the run). Everything else (ranking pixels, building perturbed inputs,
the metrics, upsampling, bookkeeping) is overhead. Target from the issue: at most 10% of the total.
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

import vitx
from vitx.data import shapes
from vitx.evaluate import REFERENCES
from vitx.registry import get_method, method_names

TARGET = 0.10


class ModelClock:
    """Seconds spent in the network's forward passes and in autograd, while open."""

    def __init__(self, model: vitx.Model):
        self.model, self.forward, self.backward = model, 0.0, 0.0

    def sync(self):
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()

    @contextmanager
    def running(self):
        starts = []

        def pre(*_):
            self.sync()
            starts.append(time.perf_counter())

        def post(*_):
            self.sync()
            self.forward += time.perf_counter() - starts.pop()

        grad = torch.autograd.grad

        def timed_grad(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = grad(*args, **kwargs)
            self.sync()
            self.backward += time.perf_counter() - start
            return out

        handles = [self.model.net.register_forward_pre_hook(pre), self.model.net.register_forward_hook(post)]
        torch.autograd.grad = timed_grad
        try:
            yield self
        finally:
            torch.autograd.grad = grad
            for handle in handles:
                handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-vit")
    parser.add_argument("--methods", default="all", help="comma-separated, or all (with the reference rows)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vitx.load_model(args.model, device=args.device)
    data = shapes(n=args.n, seed=args.seed, variant="multi" if model.config.multi_label else "single",
                  image_size=model.config.image_size[0])
    names = (method_names() + list(REFERENCES)) if args.methods == "all" else args.methods.split(",")
    print(f"vitx bench overhead: {args.model}, {args.n} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, device {model.device}")
    print(f"{'method':24} {'total s':>8} {'forward s':>9} {'backward s':>10} {'overhead':>9}")
    totals = [0.0, 0.0, 0.0]
    for name in names:
        if name not in REFERENCES:
            get_method(name)
        clock = ModelClock(model)
        with clock.running():
            start = time.perf_counter()
            vitx.evaluate(model, data, [name], batch_size=args.batch_size, seed=args.seed, gallery=0)
            total = time.perf_counter() - start
        share = 1 - (clock.forward + clock.backward) / total
        totals = [totals[0] + total, totals[1] + clock.forward, totals[2] + clock.backward]
        print(f"{name:24} {total:8.1f} {clock.forward:9.1f} {clock.backward:10.1f} {share:9.1%}")
    share = 1 - (totals[1] + totals[2]) / totals[0]
    print(f"{'all':24} {totals[0]:8.1f} {totals[1]:9.1f} {totals[2]:10.1f} {share:9.1%}   "
          f"target <= {TARGET:.0%}: {'met' if share <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
