"""The IA-RED² recipe of ``vitx train`` (Pan et al., NeurIPS 2021; the mechanism in :mod:`vitx.pruning.iared2`):
``shapes-vit`` with a multi-head interpreter before each group of blocks, the interpreters trained by REINFORCE on
the accuracy-and-efficiency reward with the backbone frozen, then the backbone fine-tuned under their policy; scored
on fresh images (accuracy, keep share per group, FLOPs against the original) and described by its model card."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import shapes
from ..flops import count_flops
from ..models import create_model
from ..pruning.iared2 import STAGES, TAU, IARed2, kept_share, log_policy, reinforce_loss, reward
from .classifier import explained, start_from
from .recipes import TEST_IMAGES, Recipe

KIND = "iared2"
INTERPRETER_SHARE = 0.6   # of the steps: the interpreters' phase (curriculum over the groups), then the backbone's
BACKBONE_LR = 0.2         # the backbone's learning rate, a share of the recipe's (the interpreters take it whole)
FLOP_IMAGES = 100         # test images counted one by one (batch 1) for the FLOPs


class IARed2Trainer:
    """The pruned twin of ``recipe.start``: its weights (head included) and one interpreter per group."""

    def __init__(self, recipe: Recipe, out_dir: Path, steps: int):
        self.original, explains = explained(recipe, out_dir)
        vit = create_model(recipe.arch, **recipe.config)
        start_from(vit, out_dir / f"{recipe.start}.safetensors", head=True)
        self.net = IARed2(vit, STAGES)
        self.step, self.switch = 0, round(steps * INTERPRETER_SHARE)
        self.meta = {"kind": KIND, **explains, "stages": list(STAGES), "ratio": None, "tau": TAU, "interpreter_steps": self.switch}

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.net.interpreters.parameters())},
                {"params": list(self.net.vit.parameters()), "lr": lr * BACKBONE_LR}]

    def loss(self, data) -> torch.Tensor:
        x, labels = self.original.normalize(data.images), data.labels
        step, self.step = self.step, self.step + 1
        interpreting = step < self.switch
        self.net.vit.eval()                                   # the stem's BatchNorm keeps its statistics
        self.net.vit.requires_grad_(not interpreting)
        self.net.interpreters.requires_grad_(interpreting)
        if not interpreting:
            return F.cross_entropy(self.net(x)[0], labels)
        active = 1 + step * len(STAGES) // self.switch        # the curriculum: group g decides from step g·S₁/D
        with torch.no_grad():
            greedy = self.net.rollout(x, sample=False, active=active)
        sampled = self.net.rollout(x, sample=True, active=active)
        gains = [reward(r.logits.argmax(-1) == labels, kept_share(r.kept, self.net.groups, self.net.prefix), TAU) for r in (sampled, greedy)]
        return reinforce_loss(log_policy(sampled.probs, sampled.kept, sampled.alive, self.net.prefix), *gains)

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """On TEST_IMAGES fresh images: the pruned twin's accuracy beside the original's, the mean share of the
        patches kept at each group, and the FLOPs of one image (batch 1, the mean over FLOP_IMAGES images) against
        the original's."""
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        x, labels = self.original.normalize(data.images), data.labels
        self.net.eval()
        patches = self.original.layout(x[:1]).num_patches
        logits, kept = [], []
        for i in range(0, len(x), 250):
            out, stages = self.net(x[i:i + 250])
            logits.append(out)
            kept.append(torch.stack([(s.kept < patches).sum(1) for s in stages], 1))
        kept = torch.cat(kept).float() / patches
        flops = sum(count_flops(self.net, x[i:i + 1]) for i in range(FLOP_IMAGES)) / FLOP_IMAGES
        original = count_flops(self.original.net, x[:1])
        accuracy = lambda out: round((out.argmax(-1) == labels).float().mean().item(), 4)
        return {"accuracy": accuracy(torch.cat(logits)), "original_accuracy": accuracy(self.original(x)),
                "keep_share": [round(v, 4) for v in kept.mean(0).tolist()],
                "keep_share_min": [round(v, 4) for v in kept.min(0).values.tolist()],
                "patches": patches, "flops": round(flops), "original_flops": original,
                "flops_ratio": round(flops / original, 4)}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m = meta["metrics"]
        groups = ", ".join(f"before block {block}: **{share:.1%}**" for block, share in
                           zip(meta["stages"], m["keep_share"]))
        return f"""# {name}

IA-RED² (Pan et al., NeurIPS 2021, IA-RED²: Interpretability-Aware Redundancy Reduction for Vision Transformers)
for `{recipe.start}`: its pruned twin, with a multi-head interpreter before each of {len(STAGES)} groups of
blocks (before blocks {', '.join(map(str, STAGES))}) that drops the patch tokens it finds uninformative (`vitx.pruning.iared2`). Used by
`vitx.explain(model, x, "ia-red2")` for `{recipe.start}` (which it refuses for other weights); not a classifier.

## Mechanism

Interpreter g: p_j = (1/H) Σ_h σ(q_cls^h · k_j^h / √d) on LN(tokens alive), H = 4 heads; a token is kept when
p_j > 0.5 (sampled from Bernoulli(p_j) while training), the class token always, a dropped token never again.
Inference runs each group on the kept tokens only.

## Training

- Command: `{meta['command']}`
- Start: every weight of `{recipe.start}`; the interpreters start near "keep everything" (p ≈ 0.88)
- Steps 1-{meta['interpreter_steps']}: the interpreters alone (backbone frozen), REINFORCE on
  R = 1 − s² for a right prediction, −τ (τ = {TAU:g}) for a wrong one, s the block-weighted share of the patches
  kept, with the thresholded policy's reward as baseline; a curriculum switches on interpreter g at step
  g x {meta['interpreter_steps']}/{len(STAGES)}
- Steps {meta['interpreter_steps'] + 1}-{meta['steps']}: the backbone fine-tuned with cross-entropy under the
  thresholded policy, the interpreters frozen (the stem's BatchNorm statistics kept)
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as
  for `shapes-vit`: 1,000,000 x (seed + 1) + step); Bernoulli samples from `torch.manual_seed({meta['seed']})`
- AdamW, learning rate {recipe.lr:g} for the interpreters, {recipe.lr * BACKBONE_LR:g} for the backbone, weight decay
  {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine
  decay over all the steps
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}, a shared 2-core machine

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}): accuracy **{m['accuracy']:.3f}**, against
{m['original_accuracy']:.3f} for `{recipe.start}` on the same images. Mean share of the {m['patches']} patches kept,
{groups}.

FLOPs of one image (batch 1, `torch.utils.flop_counter`, mean over {FLOP_IMAGES} images, interpreters
included): {m['flops'] / 1e6:.1f} M against {m['original_flops'] / 1e6:.1f} M for `{recipe.start}`
(**{1 - m['flops_ratio']:.1%} fewer**).

## Intended use and limits

The keep maps of `ia-red2` and a faster twin of `{recipe.start}`, on 64x64 shapes images only. Its metadata
records the fingerprint of the weights it was trained from ({', '.join(meta['fingerprints'])}), so the method
refuses any other weights unless `allow_stale=True` says so.
"""
