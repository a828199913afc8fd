"""The X-Pruner recipe of ``vitx train`` (:mod:`vitx.pruning.xpruner`): class-wise masks learned on the frozen
classifier ``recipe.start`` (``recipe.mask_steps`` steps, before the training loop), the layer-wise plan under the
FLOPs target ``recipe.flops``, the structural prune, then the loop fine-tunes the pruned twin with cross-entropy."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import shapes
from ..flops import SPEED_BATCH, count_flops, images_per_second
from ..model import evaluating
from ..pruning.blocks import check_share
from ..pruning.xpruner import (SMOOTHNESS, SPARSITY, ClassMasks, XPrunerTwin, layer_plan, masked_forward, mean_jaccard,
                               prune)
from .classifier import explained
from .draws import step_batches
from .recipes import _TRAIN_SEED_STRIDE, TEST_IMAGES, Recipe

MASK_LR = 0.05
MASK_SEEDS = 500_000      # mask step k draws data seed 1,000,000 x (seed + 1) + 500,000 + k (the loop's are below)


class XPruner:
    """Masks, plan and prune at construction; ``net`` (an :class:`XPrunerTwin`) is what the loop fine-tunes."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int, batch_size: int):
        check_share(recipe.flops, "FLOPs")
        self.teacher, explains = explained(recipe, out_dir)
        vit = self.teacher.net
        start = time.perf_counter()
        masks = self.learn_masks(recipe, seed, batch_size)
        plan = layer_plan(vit, masks, recipe.flops)
        twin = prune(copy.deepcopy(vit), plan).requires_grad_(True)
        self.net = XPrunerTwin(twin, masks)
        self.meta = {"kind": "xpruner", **explains, "flops_target": recipe.flops, "attn": plan["attn"],
                     "mlp": plan["mlp"], "thresholds": plan["thresholds"], "mask_steps": recipe.mask_steps,
                     "mask_seconds": round(time.perf_counter() - start, 1)}

    def learn_masks(self, recipe: Recipe, seed: int, batch_size: int) -> ClassMasks:
        """L = CE(f(x; M_y), y) + λ_s L_sparse + λ_t L_smooth over the masks, the backbone frozen."""
        vit = self.teacher.net
        masks = ClassMasks.like(vit).to(self.teacher.device)
        optimizer = torch.optim.Adam(masks.parameters(), lr=MASK_LR)
        seeds = [_TRAIN_SEED_STRIDE * (seed + 1) + MASK_SEEDS + k for k in range(recipe.mask_steps)]
        for data in step_batches(shapes, seeds, batch_size, 0):
            labels = data.labels.to(self.teacher.device)
            x = self.teacher.normalize(data.images.to(self.teacher.device))
            loss = F.cross_entropy(masked_forward(vit, x, *masks.rows(labels)), labels)
            loss = loss + masks.regulariser(vit.blocks[0].attn.num_heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return masks.requires_grad_(False)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": self.net.vit.parameters()}]

    def loss(self, data) -> torch.Tensor:
        x = self.teacher.normalize(data.images.to(self.teacher.device))
        return F.cross_entropy(self.net(x), data.labels.to(x.device))

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """Accuracy of the twin and of the classifier on the same fresh images, FLOPs of one image and images per
        second at batch 32 through each (measured in one run), and the mean Jaccard of the classes' kept units."""
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        x, labels = self.teacher.normalize(data.images.to(self.teacher.device)), data.labels.to(self.teacher.device)
        found = {}
        with evaluating(self.net):
            for prefix, net in (("", self.net), ("original_", self.teacher.net)):
                found[f"{prefix}accuracy"] = round((net(x).argmax(-1) == labels).float().mean().item(), 4)
                found[f"{prefix}flops"] = count_flops(net, x[:1])
                found[f"{prefix}images_per_second"] = images_per_second(net, x[:SPEED_BATCH])
        return {**found, "mean_jaccard": round(mean_jaccard(self.net.masks), 4)}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m = meta["metrics"]
        layers = "\n".join(f"| {layer} | {len(a)} / {self.teacher.net.cfg.embed_dim} | {len(h)} / "
                           f"{self.teacher.net.blocks[0].mlp.fc1.out_features} |"
                           for layer, (a, h) in enumerate(zip(meta["attn"], meta["mlp"])))
        return f"""# {name}

The X-Pruner (Yu & Xiang, CVPR 2023) twin of `{recipe.start}`, with the class-by-unit masks it was pruned by. It is
the trained module of the method `x-pruner`, which explains `{recipe.start}` by which units (attention context
channels, MLP neurons) each class relies on, and refuses other weights (it records the fingerprint of
`{recipe.start}`'s). It is not loaded as a classifier of its own.

## Training

- Command: `{meta['command']}`
- Masks: one row per class over every block's {self.teacher.net.cfg.embed_dim} attention context channels and
  {self.teacher.net.blocks[0].mlp.fc1.out_features} MLP neurons, M = σ(Θ), learned for {meta['mask_steps']} steps
  on `{recipe.start}` frozen (Adam, learning rate {MASK_LR:g}), each image run with its label's row; loss
  cross-entropy + {SPARSITY:g} mean(M) + {SMOOTHNESS:g} x the squared 1-D Laplacian of M along each head's channels
  ({meta['mask_seconds'] / 60:.1f} minutes, with the plan and the prune)
- Plan: units leave in increasing order of Σ_c M_c until the FLOPs are at most {meta['flops_target']:g} of
  `{recipe.start}`'s; then the structural prune (smaller layers)
- Fine-tuning: cross-entropy, {meta['steps']} steps at batch {meta['batch_size']}, AdamW, learning rate
  {recipe.lr:g}, weight decay {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g}, {recipe.warmup:.0%}
  linear warm-up then cosine decay ({meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']})
- Data: `vitx.data.shapes(variant="single")`, a fresh batch at every step; seed {meta['seed']}

## Units kept

| block | attention channels | MLP neurons |
|---|---:|---:|
{layers}

Mean Jaccard of the classes' units (those with M ≥ 0.5) between pairs of classes: {m['mean_jaccard']:.3f}.

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}); images per second at batch 32 measured in one run:

| | accuracy | FLOPs per image | images/s |
|---|---:|---:|---:|
| `{recipe.start}` | {m['original_accuracy']:.3f} | {m['original_flops'] / 1e6:.1f} M | {m['original_images_per_second']:.0f} |
| this twin | {m['accuracy']:.3f} | {m['flops'] / 1e6:.1f} M ({1 - m['flops'] / m['original_flops']:.0%} fewer) | \
{m['images_per_second']:.0f} |

FLOPs are counted by `torch.utils.flop_counter` at batch 1 (a multiply-add counts 2).

## Intended use and limits

A test subject for structured pruning read as explanation (which units serve which class), on shapes only.
"""
