"""Pruning as an efficiency method (issues 16 and 17): each pruned model of ``shapes-vit`` beside it, in one run —
accuracy on fresh images, FLOPs per image, and measured images per second at batch 32 — and the cost of reading each
pruning method's keep map (``vitx.explain`` at batch 32) against one forward of ``shapes-vit``.

    python benchmarks/pruning.py                          # on the CPU, torch's threads
    python benchmarks/pruning.py --threads 1 --clock cpu  # on a machine shared with other jobs
    python benchmarks/pruning.py --device cuda

The pruned models: EViT on ``shapes-vit`` as it is (no training), each zoo twin (DynamicViT, EViT fine-tuned,
IA-RED², Patch Slimming, X-Pruner), and ``shapes-hvt``, an HVT of ``shapes-vit``'s size trained from scratch (its
pooling map is read on it, not on ``shapes-vit``). FLOPs are counted by ``torch.utils.flop_counter`` at batch 1
(:func:`vitx.flops.count_flops`). Median of ``--repeats`` runs after ``--warmup``.
"""
from __future__ import annotations

import argparse

import torch

import vitx
from speed import machine, timed, timing_options, timing_setup
from vitx.data import shapes
from vitx.flops import count_flops
from vitx.methods.pruning.twins import load_pruned
from vitx.pruning.blocks import parse_stages
from vitx.pruning.evit import EViT
from vitx.registry import get_method, method_names
from vitx.zoo import ZOO_DIR

TWINS = {"dynamicvit": "shapes-vit-dynamicvit", "evit-finetuned": "shapes-vit-evit", "ia-red2": "shapes-vit-iared2",
         "patch-slimming": "shapes-vit-slim", "x-pruner": "shapes-vit-xpruner"}


def pruned_models(model: vitx.Model, device: torch.device) -> dict:
    """Name -> a callable x -> logits, for every pruned model of ``model`` this checkout has."""
    ratio = get_method("evit").defaults["keep_ratio"]
    evit = EViT(model.net, parse_stages(None, len(model.net.blocks)), ratio).eval()
    found = {"shapes-vit": model.net, f"evit (shapes-vit as it is, ρ {ratio:g})": evit}
    for method, name in TWINS.items():
        path = ZOO_DIR / f"{name}.safetensors"
        if method in method_names() and path.exists():
            found[f"{method} ({name})"] = load_pruned(path, device)
    if (ZOO_DIR / "shapes-hvt.safetensors").exists():
        found["hvt (shapes-hvt, its own model)"] = hvt_model(device).net
    return {name: (lambda x, net=net: _logits(net(x))) for name, net in found.items()}


def hvt_model(device: torch.device) -> vitx.Model:
    return vitx.load_model("shapes-hvt", device=device)


def _logits(output):
    return output[0] if isinstance(output, tuple) else output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=1000, help="fresh images for the accuracy column")
    timing_options(parser)
    args = parser.parse_args(argv)
    device, clock = timing_setup(parser, args)
    model = vitx.load_model("shapes-vit", device=device)
    data = shapes(n=args.images, seed=50_000)
    x_all, labels = model.normalize(data.images.to(device)), data.labels.to(device)
    x = x_all[:args.batch]
    print(machine(device) + f"; {args.clock} clock, median of {args.repeats}; batch {args.batch}; accuracy on "
          f"{args.images} fresh images (data seed 50,000)")
    print("| model | accuracy | MFLOPs/image | FLOPs vs shapes-vit | images/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    base_flops = base_rate = None
    with torch.no_grad():
        for name, run in pruned_models(model, device).items():
            accuracy = torch.cat([run(x_all[i:i + 250]).argmax(-1) for i in range(0, len(x_all), 250)])
            accuracy = (accuracy == labels).float().mean().item()
            flops = count_flops(run, x[:1])
            rate = args.batch / timed(lambda: run(x), device, args.warmup, args.repeats, clock)
            base_flops, base_rate = base_flops or flops, base_rate or rate
            print(f"| {name} | {accuracy:.3f} | {flops / 1e6:.1f} | {flops / base_flops:.2f} | {rate:.0f} | "
                  f"{rate / base_rate:.2f}x |", flush=True)
        forward = timed(lambda: model(x), device, args.warmup, args.repeats, clock)
    print(f"\nReading a keep map, batch {args.batch}, against one forward of shapes-vit ({forward * 1e3:.1f} ms):")
    print("| method | ms per batch | x one forward |")
    print("|---|---:|---:|")
    for method in [m for m in method_names() if get_method(m).family == "pruning"]:
        explained = model if "vit" in get_method(method).kinds else hvt_model(device)
        seconds = timed(lambda: vitx.explain(explained, x, method, batch_size=args.batch), device, args.warmup,
                        args.repeats, clock)
        print(f"| {method} | {seconds * 1e3:.1f} | {seconds / forward:.2f} |", flush=True)


if __name__ == "__main__":
    main()
