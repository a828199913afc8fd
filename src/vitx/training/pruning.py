"""The pruned-twin recipes of ``vitx train``: DynamicViT and EViT fine-tuned from a classifier (``recipe.start``),
scored on fresh shapes images for accuracy, tokens kept and FLOPs, and described by a model card."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import shapes
from ..flops import count_flops
from ..model import evaluating
from ..models import create_model
from ..pruning.blocks import default_stages
from ..pruning.dynamicvit import DynamicViT, dynamicvit_loss
from ..pruning.evit import EViT, keep_rate_schedule
from .classifier import explained, start_from
from .recipes import TEST_IMAGES, Recipe

PAPERS = {"dynamicvit": "DynamicViT (Rao et al., NeurIPS 2021)", "evit": "EViT (Liang et al., ICLR 2022)"}
BACKBONE_LR_SCALE = 0.01   # DynamicViT: the backbone learns at 1/100 of the prediction modules' rate (authors' recipe)


class PrunedTwin:
    """A pruned twin of the classifier ``recipe.start`` (frozen, kept as the teacher and for its fingerprint)."""

    def __init__(self, recipe: Recipe, out_dir: Path, steps: int):
        self.teacher, explains = explained(recipe, out_dir)
        vit = create_model(recipe.arch, **recipe.config)
        start_from(vit, out_dir / f"{recipe.start}.safetensors", head=True)
        stages = default_stages(len(vit.blocks))
        self.net = (DynamicViT if recipe.kind == "dynamicvit" else EViT)(vit, stages, recipe.keep_ratio)
        self.kind, self.ratio, self.steps, self.step = recipe.kind, recipe.keep_ratio, steps, 0
        self.meta = {"kind": recipe.kind, **explains, "stages": list(stages), "ratio": recipe.keep_ratio}

    def to(self, device) -> None:
        self.net.to(device)
        self.teacher.to(device)

    def param_groups(self, lr: float) -> list[dict]:
        """DynamicViT: the prediction modules at ``lr``, the backbone at lr/100; EViT: every weight at ``lr``."""
        if self.kind != "dynamicvit":
            return [{"params": self.net.parameters()}]
        return [{"params": self.net.predictors.parameters()},
                {"params": self.net.vit.parameters(), "lr": lr * BACKBONE_LR_SCALE}]

    def loss(self, data) -> torch.Tensor:
        x = self.teacher.normalize(data.images.to(self.teacher.device))
        labels = data.labels.to(x.device)
        self.step += 1
        if self.kind == "evit":
            logits, _ = self.net(x, keep_rate_schedule(self.step - 1, self.steps, self.ratio))
            return F.cross_entropy(logits, labels)
        with torch.no_grad():
            tokens = self.teacher.net.forward_features(x)
        teacher_logits = self.teacher.net.forward_head(tokens)
        prefix = self.teacher.net.num_prefix_tokens
        return dynamicvit_loss(self.net(x), labels, teacher_logits, tokens[:, prefix:], self.ratio)

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """Accuracy of the twin and of the classifier on the same fresh images, the share of patches kept after each
        stage, and the FLOPs of one image through each."""
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        device = self.teacher.device
        x, labels = self.teacher.normalize(data.images.to(device)), data.labels.to(device)
        with evaluating(self.net):
            logits, stages = self.net(x)
            flops = count_flops(self.net, x[:1])
        patches = stages[0].scored.shape[1]
        return {"accuracy": round((logits.argmax(-1) == labels).float().mean().item(), 4),
                "original_accuracy": round((self.teacher(x).argmax(-1) == labels).float().mean().item(), 4),
                "kept": [round(min(s.kept.shape[1], patches) / patches, 4) for s in stages],
                "flops": flops, "original_flops": count_flops(self.teacher.net, x[:1])}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m = meta["metrics"]
        stages = ", ".join(str(b) for b in meta["stages"])
        kept = ", ".join(f"{share:.0%}" for share in m["kept"])
        if self.kind == "dynamicvit":
            how = (f"Prediction modules before blocks {stages} score the patch tokens; the top ⌊64 ρ^s⌋ stay before "
                   f"stage s (ρ = {recipe.keep_ratio:g}).\n- Loss: cross-entropy + 0.5 KL to `{recipe.start}`'s "
                   f"logits + 0.5 MSE to its final tokens (those kept) + 2 x the keep-ratio loss, as the authors'\n"
                   f"  DeiT recipe; Gumbel-softmax decisions with attention masking while training\n- Learning rate "
                   f"{recipe.lr:g} for the prediction modules, {recipe.lr * BACKBONE_LR_SCALE:g} for the backbone")
        else:
            how = (f"Inside blocks {stages}, the ⌈ρ(N − 1)⌉ tokens the class token attends to most stay and the rest "
                   f"are fused into one (ρ = {recipe.keep_ratio:g}).\n- Loss: cross-entropy; the keep rate is 1 for "
                   f"the first 10% of the steps, then falls to ρ along a cosine by 60%\n- Learning rate "
                   f"{recipe.lr:g} for every weight")
        return f"""# {name}

The {PAPERS[self.kind]} twin of `{recipe.start}`: the same classifier fine-tuned to drop patch tokens as it goes.
It is the trained module of the method `{'dynamicvit' if self.kind == 'dynamicvit' else 'evit-finetuned'}`, which
explains `{recipe.start}` by the tokens its twin keeps, and refuses other weights (it records the fingerprint of
`{recipe.start}`'s). It is not loaded as a classifier of its own.

## Training

- Command: `{meta['command']}`
- Start: every weight of `{recipe.start}`, which stays frozen as the reference
- {how}
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as for
  `{recipe.start}`); seed {meta['seed']}
- Steps: {meta['steps']}; AdamW, weight decay {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g},
  {recipe.warmup:.0%} linear warm-up then cosine decay
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}):

| | accuracy | FLOPs per image | patch tokens kept after each stage |
|---|---:|---:|---|
| `{recipe.start}` | {m['original_accuracy']:.3f} | {m['original_flops'] / 1e6:.1f} M | 100% |
| this twin | {m['accuracy']:.3f} | {m['flops'] / 1e6:.1f} M ({1 - m['flops'] / m['original_flops']:.0%} fewer) | {kept} |

FLOPs are counted by `torch.utils.flop_counter` at batch 1 (a multiply-add counts 2).

## Intended use and limits

A test subject for token pruning read as explanation, and for its speed-up, on shapes only.
"""
