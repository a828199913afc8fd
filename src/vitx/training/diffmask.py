"""The Vision DiffMask recipe of ``vitx train`` (Nalmpantis et al., CVPR Workshops 2023): gates and a placeholder
learned on a frozen classifier (:mod:`vitx.pruning.diffmask`), scored on held-out shapes images, and its card."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import shapes
from ..pruning.diffmask import EPSILON, STRETCH, TEMPERATURE, DiffMask, Lagrangian, kl_to_original, masked_logits, \
    read, sample_gates
from .classifier import explained
from .recipes import TEST_IMAGES, Recipe

KIND = "diffmask"
# the multipliers' learning rate: the authors' 0.3 is for 20 epochs; in 1,500 steps each of the 8 layers is drawn
# about 190 times, and at 0.3 a multiplier can climb only about 57 (our first run ended with KL 0.54 > ε, λ ≈ 60)
MULTIPLIER_LR = 1.0


class Masker:
    """Vision DiffMask for the classifier ``recipe.start``, which stays frozen: only the gates and the
    placeholder (``net``, what is saved) and the Lagrange multipliers train."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int):
        self.model, explains = explained(recipe, out_dir)
        self.classifier = self.model.net
        cfg = self.classifier.cfg
        self.net = DiffMask(cfg.embed_dim, cfg.depth)
        self.lagrangian = Lagrangian(len(self.net.gates), lr=MULTIPLIER_LR)
        self.generator = torch.Generator().manual_seed(seed)
        self.meta = {"kind": KIND, **explains, "dim": cfg.embed_dim, "depth": cfg.depth, "epsilon": EPSILON, "temperature": TEMPERATURE,
                     "stretch": list(STRETCH), "multiplier_lr": MULTIPLIER_LR}

    def loss(self, data) -> torch.Tensor:
        """The Lagrangian at a layer drawn uniformly; the multiplier of that layer takes its ascent step here (its
        gradient, mean KL − ε, is known before the backward pass)."""
        reading = read(self.classifier, self.model.normalize(data.images))
        layer = int(torch.randint(len(self.net.gates), (), generator=self.generator))
        kl, log_l0 = self.net.terms(self.classifier, reading, layer, self.generator)
        loss = self.lagrangian.loss(layer, kl, log_l0)
        self.lagrangian.ascend(layer, kl)
        return loss

    @torch.no_grad()
    def score(self, test_seed: int, batch_size: int = 250) -> dict:
        """On fresh images, with the gates of every layer: the expected share of the patches kept (the mean
        attribution), KL(p ‖ p̃) with sampled gates (mean, 90th percentile, share of images within ε), and how often the masked input keeps
        the predicted class; with the final multipliers."""
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        generator = torch.Generator().manual_seed(test_seed)
        kept, kls, same = [], [], []
        for start in range(0, TEST_IMAGES, batch_size):
            reading = read(self.classifier, self.model.normalize(data.images[start:start + batch_size]))
            mask = sample_gates(self.net.log_alpha(reading), generator=generator).prod(-1)
            masked = masked_logits(self.classifier, reading, mask, self.net.placeholder)
            kept.append(self.net.attribution(reading).mean(1))
            kls.append(kl_to_original(reading.logits, masked))
            same.append(masked.argmax(-1) == reading.logits.argmax(-1))
        kl = torch.cat(kls)
        return {"kept": round(torch.cat(kept).mean().item(), 4), "kl": round(kl.mean().item(), 4),
                "kl_p90": round(kl.quantile(0.9).item(), 4), "within": round((kl <= EPSILON).float().mean().item(), 4),
                "agreement": round(torch.cat(same).float().mean().item(), 4),
                "multipliers": self.lagrangian.values()}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m, depth = meta["metrics"], meta["depth"]
        return f"""# {name}

Vision DiffMask (Nalmpantis et al., CVPR Workshops 2023; after De Cao et al., EMNLP 2020) for `{meta['explains']}`:
{depth + 2} gates, one per hidden state of the frozen classifier (the patch embeddings, the input of each of its
{depth} blocks, the last block's output), each an MLP reading [h_0; h_i] per patch and giving a hard-concrete gate
(β = {meta['temperature']:g}, stretch ({meta['stretch'][0]:g}, {meta['stretch'][1]:g})); their product over the
layers masks the patch embeddings, a masked patch being replaced by a learned placeholder. Used by
`vitx.explain(model, x, "diffmask")` for `{meta['explains']}`: the map is each patch's probability of being kept,
Π_i P(z_i ≠ 0), for the predicted class. Not a classifier; `{meta['explains']}`'s weights are never changed.
{sum(p.numel() for p in self.net.parameters()):,} parameters. See `vitx.pruning.diffmask` for every choice.

## Training

- Command: `{meta['command']}` (seed {meta['seed']})
- Loss: λ_k (KL(p ‖ p̃) − ε) + mean log Π_(i≤k) P(z_i ≠ 0), ε = {meta['epsilon']:g} nats, the layer k drawn
  uniformly at each step, p̃ the prediction on the input masked by the product of the sampled gates up to k;
  one multiplier λ_k per layer, starting at 20, trained by gradient ascent (Adam, learning rate
  {meta['multiplier_lr']:g}, kept in [0, 200])
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as
  for `{meta['explains']}`: 1,000,000 x (seed + 1) + step); layers and gates drawn from `torch.Generator` seeded
  with the seed
- Steps: {meta['steps']}; AdamW on the gates and the placeholder, learning rate {recipe.lr:g}, weight decay
  {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine
  decay
- Training time: {meta['train_seconds'] / 60:.1f} minutes, {meta['train_device']} of a shared 2-core machine

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}), with the gates of every layer:

- Expected share of the patches kept (the mean of the map): **{m['kept']:.3f}**
- KL(p ‖ p̃) with sampled gates: mean **{m['kl']:.3f}** nats (ε = {meta['epsilon']:g}), 90th percentile
  {m['kl_p90']:.3f}; {m['within']:.1%} of the images within ε
- The masked input keeps the predicted class for {m['agreement']:.1%} of the images
- Final multipliers λ_0..λ_{depth + 1}: {', '.join(f'{v:g}' for v in m['multipliers'])}
{_constraint(m, meta['epsilon'])}

## Intended use and limits

Explains `{meta['explains']}` on 64x64 shapes images only, and only the class it predicts (the gates keep the
prediction; they have no target). It refuses other weights: its metadata records the fingerprint of
`{meta['explains']}` ({', '.join(meta['fingerprints'])}; `vitx.checkpoint.fingerprint`).
"""


def _constraint(metrics: dict, epsilon: float) -> str:
    """Whether the run met its constraint, in words for the card."""
    if metrics["kl"] <= epsilon:
        return f"\nThe constraint holds on average: mean KL {metrics['kl']:.3f} <= ε."
    return (f"\nThe constraint is not met on average (mean KL {metrics['kl']:.3f} > ε = {epsilon:g}): the mean is held "
            "up by the few images whose mask loses the prediction, and the multipliers were still rising when training "
            "stopped.")
