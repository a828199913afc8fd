"""Forward passes and seconds per image of the perturbation methods, beside captum's KernelShap and Occlusion
at equal numbers of model evaluations.

    python benchmarks/perturbation.py                                    # shapes-vit and ViT-B/16, defaults
    python benchmarks/perturbation.py --models vit-b16 --images 1 --threads 2
    python benchmarks/perturbation.py --param samples=512 masks=500      # override a method's parameter

For each model, each of occlusion, rise, kernel-shap, vit-cx and vit-shapley (the zoo's explainer for
shapes-vit; one with random weights for ViT-B/16, which costs the same) runs once through ``vitx.explain`` at
its default settings (or those ``--param`` sets) on the same images with the same targets (the predicted
classes, found before timing). Forward passes per image count the images that go through a ViT (the explained
one, and vit-shapley's surrogate and explainer backbone), divided by the number of images; seconds per image are the wall time of the call divided by the number of images.
captum's KernelShap (patches as features, baseline 0 in model input space, n_samples = kernel-shap's own
evaluations per image) and Occlusion (the same windows in pixels, the same baseline) then run with the same
number of images per forward pass (``internal_batch_size``) and the same count of evaluations; the ratio is
captum's seconds over vitx's, both from this one process. The last column compares the maps: occlusion must
agree to float rounding; KernelSHAP estimates agree up to their sampling error.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from captum.attr import KernelShap, Occlusion

import vitx
from speed import build, parse_param
from vitx.checkpoint import save_checkpoint
from vitx.models import VisionTransformer
from vitx.models.shapley import ShapleyExplainer
from vitx.registry import get_method

METHODS = ("occlusion", "rise", "kernel-shap", "vit-cx", "vit-shapley")


class Counter:
    """Images through any ViT network while the block is open: the explained model's, and for vit-shapley its
    surrogate's and its explainer's backbone (one explainer pass costs a forward and one block)."""

    def __enter__(self) -> "Counter":
        self.images = 0
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _count(self, module, inputs) -> None:
        if isinstance(module, (VisionTransformer, ShapleyExplainer)):  # the explainer runs its backbone's
            # forward_features, which no hook sees
            self.images += inputs[0].shape[0]


def measured(model, fn, images: int) -> tuple[torch.Tensor, float, float]:
    """fn()'s result, its forward passes per image and its seconds per image."""
    with Counter() as counter:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, counter.images / images, seconds / images


def patch_features(layout) -> torch.Tensor:
    """(1, 1, H, W) patch index of every pixel: captum's feature mask for patches as players."""
    ph, pw = layout.patch_size
    return torch.arange(layout.num_patches).view(1, 1, *layout.grid).repeat_interleave(ph, 2).repeat_interleave(pw, 3)


def captum_run(model, x, targets, name: str, params: dict):
    """captum's counterpart of ``name`` at equal evaluations per image, (B, gh, gw), or None if it has none."""
    if name not in ("kernel-shap", "occlusion"):
        return None
    layout, per_pass = model.layout(x), params["internal_batch_size"]
    if name == "kernel-shap":
        attributions = KernelShap(model).attribute(x, baselines=0.0, target=targets,
                                                   feature_mask=patch_features(layout),
                                                   n_samples=2 * ((params["samples"] + 1) // 2) + 2,
                                                   perturbations_per_eval=per_pass)
    elif name == "occlusion":
        ph, pw = layout.patch_size
        window, stride = params["window"], params["stride"]
        attributions = Occlusion(model).attribute(x, sliding_window_shapes=(3, window * ph, window * pw),
                                                  strides=(3, stride * ph, stride * pw), baselines=0.0, target=targets,
                                                  perturbations_per_eval=max(1, per_pass // len(x)))
    return attributions[:, 0, ::layout.patch_size[0], ::layout.patch_size[1]]


def warm_up(model, x, targets) -> None:
    """Both code paths once, cheaply (one window covering the image), and a pass at the passes' batch size."""
    whole = min(model.layout(x).grid)
    vitx.explain(model, x[:1], "occlusion", targets[:1], window=whole)
    captum_run(model, x[:1], targets[:1], "occlusion", {"window": whole, "stride": 1, "internal_batch_size": 64})
    with torch.no_grad():
        model(x[:1].repeat(64, 1, 1, 1))


def random_explainer(model, directory: Path) -> str:
    """A ViT Shapley explainer with random weights for ``model`` (a vitx ViT, its own surrogate), saved in
    ``directory``: the cost of vit-shapley does not depend on the weights."""
    meta = {"arch": "vit_base_patch16_224", "config": {}, "mean": model.config.mean, "std": model.config.std,
            "class_names": model.config.class_names}
    save_checkpoint(model.net, directory / "surrogate.safetensors", meta)
    explainer = ShapleyExplainer(model.net.cfg)
    return str(save_checkpoint(explainer, directory / "explainer.safetensors",
                               {**meta, "kind": "shapley-explainer", "explains": model.config.name,
                                "surrogate": "surrogate", "extra_blocks": 1, "mlp_layers": 3}))


def inputs(label: str, model, count: int, seed: int) -> torch.Tensor:
    """Shapes images for shapes-vit (vit-cx's clusters depend on the image), uniform noise for ViT-B/16."""
    if label == "shapes-vit":
        return model.preprocess(vitx.data.shapes(n=count, seed=seed).images)
    generator = torch.Generator().manual_seed(seed)
    return model.preprocess(torch.rand(count, 3, *model.config.image_size, generator=generator))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["shapes-vit", "vit-b16"], choices=["shapes-vit", "vit-b16"])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--param", nargs="+", default=[], metavar="NAME=VALUE",
                        help="set a parameter of every method that has it, e.g. samples=512")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=10000)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(parse_param(text) for text in args.param)
    print(f"vitx {vitx.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.images} images per model, wall clock, one run each")
    print("| model | method | settings | forwards/image | s/image | captum | forwards/image | s/image | "
          "captum/vitx | max map difference |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|")
    for label in args.models:
        model, note = build(label)
        print(f"<!-- {label}: {note} -->")
        x = inputs(label, model, args.images, args.seed)
        with torch.no_grad():
            targets = model(x).argmax(1)
        warm_up(model, x, targets)
        for name in args.methods:
            defaults = get_method(name).defaults
            params = {**defaults, **{k: v for k, v in overrides.items() if k in defaults}}
            if name == "vit-shapley" and label == "vit-b16":
                params["explainer"] = random_explainer(model, Path(tempfile.mkdtemp(prefix="vitx-bench-")))
            settings = ", ".join(f"{k}={v}" for k, v in params.items() if k in ("window", "stride", "masks", "cell",
                                                                               "samples", "distance_threshold"))
            exp, forwards, seconds = measured(
                model, lambda: vitx.explain(model, x, name, targets, normalize=False, **params), args.images)
            row = f"| {label} | {name} | {settings} | {forwards:.0f} | {seconds:.3f} |"
            theirs, their_forwards, their_seconds = measured(
                model, lambda: captum_run(model, x, targets, name, params), args.images)
            if theirs is None:
                print(row + " | | | | |", flush=True)
                continue
            gap = float((theirs - exp.token_maps).abs().max() / exp.token_maps.abs().max())
            captum = "KernelShap" if name == "kernel-shap" else "Occlusion"
            print(row + f" {captum} | {their_forwards:.0f} | {their_seconds:.3f} | {their_seconds / seconds:.2f} | "
                  f"{gap:.1e} |", flush=True)


if __name__ == "__main__":
    main()
