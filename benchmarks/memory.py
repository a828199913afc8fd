"""Peak memory per image of every registered method, beside a forward and a forward+backward, and against the
memory each method declares (:mod:`vitx.memory`), which ``explain()`` uses to size its chunks.

    python benchmarks/memory.py                                  # ViT-B/16 (random weights), every method
    python benchmarks/memory.py --model shapes-vit --batches 1 8 --methods rollout lrp
    python benchmarks/memory.py --device cuda

Each measurement runs in a fresh process: it builds the model, runs one warm-up call on one image, resets
the peak (CPU: returns freed heap to the system with glibc's malloc_trim, writes 5 to /proc/self/clear_refs, then reads VmHWM from /proc/self/status; CUDA:
torch.cuda.reset_peak_memory_stats), runs ``vitx.explain`` on B images in one chunk and reports the peak
above what was resident before the call. Methods whose cost grows with a count (masks, samples, steps,
windows) run with ``internal_batch_size`` copies in one pass and the count cut to one pass (``CHEAP``): the
peak of a longer run is the same, only longer. Printed per method and B: measured MB per image, the
declaration's MB per image ((per_image·B + per_pass)·graph / B) and their ratio (measured / declared; above 1
means the budget underestimates the method).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

import vitx
from vitx.memory import graph_bytes
from vitx.models import create_model
from vitx.registry import get_method, method_names

from speed import peak_bytes, work

# One pass of internal_batch_size copies for the methods whose count only makes the run longer.
CHEAP = {"integrated-gradients": {"steps": 16, "internal_batch_size": 16},
         "smoothgrad": {"samples": 16, "internal_batch_size": 16},
         "beyond-intuition-head": {"steps": 16, "internal_batch_size": 16},
         "beyond-intuition-token": {"steps": 16, "internal_batch_size": 16},
         "rise": {"masks": 64}, "kernel-shap": {"samples": 64}}


def build(name: str, device: str) -> vitx.Model:
    if name == "vit-b16":
        return vitx.load_model(create_model("vit_base_patch16_224").eval(), device=device)
    return vitx.load_model(name, device=device)


def measure(model_name: str, method: str, batch: int, device: str) -> dict:
    """One measurement, in this process: peak bytes above the resident memory while explaining ``batch`` images
    (:func:`speed.peak_bytes`, after a warm-up call and after handing the heap it freed back to the system)."""
    torch.manual_seed(0)
    model = build(model_name, device)
    h, w = model.config.image_size
    x = torch.randn(batch, 3, h, w, device=model.device)
    unit, declared, params = graph_bytes(model, x[:1].clone()), None, {}
    if method not in ("forward", "forward+backward"):
        info, cheap = get_method(method), CHEAP.get(method, {})
        params = {**cheap, "batch_size": batch, "memory": "1TB"}
        per_image, per_pass = info.memory(info.bind(cheap))
        declared = (per_image * batch + per_pass) * unit / batch
    run = work(method, model, x, params)
    run()  # warm-up: first-call allocations, caches
    peak = peak_bytes(run, model.device)
    return {"method": method, "batch": batch, "per_image": peak / batch, "declared": declared, "graph": unit}


def in_child(model: str, method: str, batch: int, device: str) -> dict | str:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import memory; "
            f"print(json.dumps(memory.measure({model!r}, {method!r}, {batch}, {device!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit-b16", help="'vit-b16' (random weights) or a zoo name")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method that applies")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kind = build(args.model, "cpu").config.kind
    names = args.methods or [m for m in method_names() if kind in get_method(m).kinds]
    print(f"{'method':26s} {'B':>3s} {'MB/image':>9s} {'declared':>9s} {'ratio':>6s}")
    for name in ["forward", "forward+backward", *names]:
        for batch in args.batches:
            row = in_child(args.model, name, batch, args.device)
            if isinstance(row, str):
                print(f"{name:26s} {batch:3d} skipped: {row}")
                continue
            declared = row["declared"]
            print(f"{name:26s} {batch:3d} {row['per_image'] / 2 ** 20:9.1f} "
                  + (f"{declared / 2 ** 20:9.1f} {row['per_image'] / declared:6.2f}" if declared else
                     f"{'':9s} {'':6s} (graph {row['graph'] / 2 ** 20:.1f} MB)"), flush=True)


if __name__ == "__main__":
    main()
