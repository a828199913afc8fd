"""The Patch Slimming recipe of ``vitx train`` (Tang et al., CVPR 2022; the mechanism in :mod:`vitx.pruning.slimming`):
the top-down search of ``recipe.start``'s static keep masks on a calibration set of training images, then the
slimmed twin fine-tuned with cross-entropy; scored on fresh images (accuracy, FLOPs, images per second at batch 32
against the original, patches kept per block) and described by its model card."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import shapes
from ..flops import SPEED_BATCH, SPEED_REPEATS, count_flops, images_per_second
from ..models import create_model
from ..pruning.slimming import Slimmed, search
from .classifier import explained, start_from
from .recipes import _TRAIN_SEED_STRIDE, TEST_IMAGES, Recipe

KIND = "slimming"
FLOPS_TARGET = 0.65     # the twin computes at most this share of the original's FLOPs (35% fewer)
CALIBRATION = 256       # training images whose mean impact scores decide the masks


class SlimmingTrainer:
    """The slimmed twin of ``recipe.start``: its masks searched at construction, its weights (head included)
    fine-tuned."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int, steps: int):
        self.original, explains = explained(recipe, out_dir)
        vit = create_model(recipe.arch, **recipe.config)
        start_from(vit, out_dir / f"{recipe.start}.safetensors", head=True)
        vit.eval()
        calibration_seed = _TRAIN_SEED_STRIDE * (seed + 1) + steps     # a training seed no step draws
        images = self.original.normalize(shapes(n=CALIBRATION, seed=calibration_seed).images)
        started = time.perf_counter()
        masks, tolerance, measured = search(vit, images, flops=FLOPS_TARGET)
        target = {"flops": FLOPS_TARGET, "tolerance": tolerance, "measured": round(measured, 4)}
        self.net = Slimmed(vit, masks, target)
        self.meta = {"kind": KIND, **explains, "stages": masks, "ratio": target, "calibration_seed": calibration_seed,
                     "calibration_images": CALIBRATION, "search_seconds": round(time.perf_counter() - started, 1)}

    def loss(self, data) -> torch.Tensor:
        return F.cross_entropy(self.net(self.original.normalize(data.images)), data.labels)

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """On TEST_IMAGES fresh images: the twin's accuracy beside the original's, the FLOPs of one image and the
        images per second at batch 32 of each (one run, median of SPEED_REPEATS), patches kept per block."""
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        x, labels = self.original.normalize(data.images), data.labels
        self.net.eval()
        accuracy = {name: round((torch.cat([net(x[i:i + 250]) for i in range(0, len(x), 250)]).argmax(-1) == labels)
                                .float().mean().item(), 4) for name, net in (("twin", self.net),
                                                                             ("original", self.original.net))}
        speed = {name: images_per_second(net, x[:SPEED_BATCH]) for name, net in (("twin", self.net),
                                                                                 ("original", self.original.net))}
        return {"accuracy": accuracy["twin"], "original_accuracy": accuracy["original"],
                "flops": count_flops(self.net, x[:1]), "original_flops": count_flops(self.original.net, x[:1]),
                "images_per_second": speed["twin"], "original_images_per_second": speed["original"],
                "kept": [len(m) for m in self.net.masks], "patches": self.net.patches}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m, target = meta["metrics"], meta["ratio"]
        kept = ", ".join(str(k) for k in m["kept"])
        return f"""# {name}

Patch Slimming (Tang et al., CVPR 2022, Patch Slimming for Efficient Vision Transformers) for `{recipe.start}`: its
slimmed twin, in which each block computes only the patch tokens the blocks above it need, by static masks found
top-down from the last block (`vitx.pruning.slimming`). Used by `vitx.explain(model, x, "patch-slimming")` for
`{recipe.start}` (which it refuses for other weights); not a classifier of its own.

## Search

- Impact of patch i at block t (the paper's Theorem 1): s_t,i = Σ over head paths ‖A_t[:, i]‖² ‖U_t[i, :]‖², A_t the
  product of the masked attention maps of the blocks above t, U_t = P_t |Z_t-1|; its mean over {meta['calibration_images']}
  training images (data seed {meta['calibration_seed']})
- The last block keeps the class token alone; block t keeps block t + 1's patches, then the best-scored others until
  those it drops carry at most ε of its total score; ε = {target['tolerance']:.4f}, found by bisection for at most
  {target['flops']:.0%} of `{recipe.start}`'s FLOPs ({target['measured']:.1%} reached); no per-block fine-tuning
- Patches kept at the output of blocks 0 to {len(m['kept']) - 1} (of {m['patches']}): **{kept}**; the masks are
  in the file's metadata (`stages`)
- Search time: {meta['search_seconds'] / 60:.1f} minutes

## Fine-tuning

- Command: `{meta['command']}`
- Start: every weight of `{recipe.start}`; loss: cross-entropy; AdamW, learning rate {recipe.lr:g}, weight decay
  {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine
  decay
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as
  for `{recipe.start}`); seed {meta['seed']}; {meta['steps']} steps
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}, a shared 2-core machine (the
  search before it not included)

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}), in one run:

| | accuracy | FLOPs per image (batch 1) | images per second (batch 32) |
|---|---:|---:|---:|
| `{recipe.start}` | {m['original_accuracy']:.3f} | {m['original_flops'] / 1e6:.1f} M | {m['original_images_per_second']:.0f} |
| this twin | {m['accuracy']:.3f} | {m['flops'] / 1e6:.1f} M ({1 - m['flops'] / m['original_flops']:.1%} fewer) | {m['images_per_second']:.0f} |

FLOPs by `torch.utils.flop_counter` (a multiply-add counts 2); images per second: the median of {SPEED_REPEATS} forwards
of {SPEED_BATCH} images, wall clock, on the shared machine (noisy).

## Intended use and limits

The keep masks and impact maps of `patch-slimming` and a faster twin of `{recipe.start}`, on 64x64 shapes images
only. The masks are the same for every image. Its metadata records the fingerprint of the weights it was searched
from ({', '.join(meta['fingerprints'])}), so the method refuses any other weights unless `allow_stale=True`.
"""
