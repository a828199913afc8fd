"""The two ViT Shapley recipes of ``vitx train`` (Covert, Kim & Lee, ICLR 2023): the surrogate, fine-tuned
from a classifier to predict with patches held out, and the amortised explainer trained on the surrogate's
game; each scored on held-out shapes images and described by its model card."""
from __future__ import annotations

from pathlib import Path

import torch
from scipy.stats import spearmanr

from ..checkpoint import fingerprint, read_metadata
from ..data import CLASS_NAMES, shapes
from ..explain import explain
from ..loading import load_model
from ..methods.vitshapley import KIND, grand_and_null
from ..model import Model, wrap
from ..models import ARCHITECTURES, create_model
from ..models.shapley import ShapleyExplainer
from ..shapley import efficient_normalization, sample_coalitions
from ..surrogate import (coalition_probabilities, masked_logits, shapley_loss, surrogate_loss,
                        uniform_size_coalitions)
from .classifier import frozen, require_start, score_shapes, start_from
from .recipes import MEAN, STD, TEST_IMAGES, Recipe

KEPT = (0.25, 0.5, 0.75)        # shares of the patches kept when the surrogate is scored
RANK_IMAGES = 32                # held-out images on which the explainer is compared with KernelSHAP
KERNEL_SHAP_SAMPLES = 4096      # KernelSHAP's coalitions per image for that comparison
EXPLAINER_HEAD = {"extra_blocks": 1, "mlp_layers": 3}


def kernel_shap_on_game(surrogate: Model, x: torch.Tensor, targets: torch.Tensor, samples: int,
                       seed: int = 0) -> torch.Tensor:
    """(B, P) KernelSHAP values of the game ViT Shapley estimates: the surrogate's probability of ``targets``
    with the patches outside a coalition held out by attention masking. The reference the explainer is
    checked against (its score, the quality tests, studies/shapley_agreement.py)."""
    return explain(surrogate, x, "kernel-shap", target=targets, normalize=False, removal="attention",
                   score="probability", samples=samples, seed=seed).token_maps.flatten(1)


def _players(model: Model) -> int:
    return model.layout().num_patches


class Surrogate:
    """g, started from the classifier f = ``recipe.start`` (head included), trained on KL(f(x) ‖ g(x_S))."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int):
        path = require_start(out_dir / f"{recipe.start}.safetensors")
        self.original = frozen(path)
        self.net = create_model(recipe.arch)
        start_from(self.net, path, head=True)
        self.model = wrap(self.net, mean=MEAN, std=STD, class_names=CLASS_NAMES)
        self.players = _players(self.model)
        self.generator = torch.Generator().manual_seed(seed)
        self.meta = {"kind": "surrogate", "surrogate_of": recipe.start}

    def loss(self, data) -> torch.Tensor:
        x = self.model.normalize(data.images)
        with torch.no_grad():
            wanted = self.original(x)
        keep = uniform_size_coalitions(len(x), self.players, self.generator)
        return surrogate_loss(wanted, masked_logits(self.model, x, keep))

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """Accuracy on whole images, and with a random share of the patches kept (the rest held out by attention
        masking): the surrogate's accuracy, its agreement with the original's prediction on the whole image,
        and the original classifier's own accuracy under the same masking."""
        metrics = score_shapes(self.model, "single", test_seed)
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        x, labels = self.model.normalize(data.images), data.labels
        generator = torch.Generator().manual_seed(test_seed)
        full = self.original(x).argmax(-1)
        for share in KEPT:
            kept = round(share * self.players)
            keep = torch.rand(len(x), self.players, generator=generator).argsort(1) < kept
            ours = masked_logits(self.model, x, keep).argmax(-1)
            theirs = masked_logits(self.original, x, keep).argmax(-1)
            metrics[f"kept_{share:g}"] = {
                "accuracy": round((ours == labels).float().mean().item(), 4),
                "agreement": round((ours == full).float().mean().item(), 4),
                "original_accuracy": round((theirs == labels).float().mean().item(), 4)}
        return metrics

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m = meta["metrics"]
        rows = "\n".join(f"| {share:.0%} | {m[f'kept_{share:g}']['accuracy']:.3f} | {m[f'kept_{share:g}']['agreement']:.3f} "
                         f"| {m[f'kept_{share:g}']['original_accuracy']:.3f} |" for share in KEPT)
        return f"""# {name}

The surrogate of ViT Shapley (Covert, Kim & Lee, ICLR 2023) for `{recipe.start}`: the same classifier,
fine-tuned to predict well when patches are held out, so that "the model without these patches" has a
meaning. It defines the game that `vit-shapley` and its explainer (`shapes-vit-shapley`) explain:
v_y(S) = softmax(g(x_S))_y, the patches outside S removed as keys from every attention layer.
Load it like any classifier: `vitx.load_model("{name}")`.

## Training

- Command: `{meta['command']}`
- Start: every weight of `{recipe.start}` (train it first); `{recipe.start}` itself is the frozen target f
- Loss: KL(f(x) ‖ g(x_S)), the original's prediction on the whole image against the surrogate's with only
  the patches of S left; per image |S| uniform in 0..64, then S uniform among the subsets of that size
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as
  for `shapes-vit`: 1,000,000 x (seed + 1) + step); masks from `torch.Generator` seeded with the seed
- Steps: {meta['steps']}; AdamW, learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g}, gradient norm
  clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine decay
- Training time: {meta['train_seconds'] / 60:.1f} minutes on a shared 2-core CPU

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}): accuracy on whole images **{m['accuracy']:.3f}**.
With a random share of the patches kept (the rest held out by attention masking):

| patches kept | surrogate accuracy | agreement with `{recipe.start}` on the whole image | `{recipe.start}` accuracy, same masking |
|---|---:|---:|---:|
{rows}

## Intended use and limits

The value function of ViT Shapley on shapes; a classifier only of this synthetic world, like `{recipe.start}`.
"""


def _paired(coalitions: int, images: int, players: int, generator: torch.Generator) -> torch.Tensor:
    """(coalitions, images, P): Shapley-kernel coalitions per image, each with its complement."""
    drawn = sample_coalitions(players, coalitions * images, generator)
    return drawn.view(2, coalitions // 2, images, players).flatten(0, 1)


class Explainer:
    """The ViT Shapley explainer of the surrogate ``recipe.start``: its backbone starts from the surrogate."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int):
        if recipe.coalitions < 2 or recipe.coalitions % 2:
            raise ValueError(f"coalitions per image must be even and at least 2, got {recipe.coalitions}")
        path = require_start(out_dir / f"{recipe.start}.safetensors")
        self.surrogate = frozen(path)
        self.net = ShapleyExplainer(ARCHITECTURES[recipe.arch], **EXPLAINER_HEAD)
        self.net.backbone.load_state_dict({k: v for k, v in self.surrogate.net.state_dict().items()
                                           if not k.startswith("head.")})
        self.coalitions = recipe.coalitions
        self.generator = torch.Generator().manual_seed(seed)
        self.players = _players(self.surrogate)
        explains = read_metadata(path).get("surrogate_of")
        classifier = load_model(str(require_start(out_dir / f"{explains}.safetensors")))
        self.meta = {"kind": KIND, "explains": explains, "surrogate": recipe.start,
                     "fingerprints": [fingerprint(classifier.net), fingerprint(self.surrogate.net)],
                     "coalitions": recipe.coalitions, **EXPLAINER_HEAD}

    def loss(self, data) -> torch.Tensor:
        x = self.surrogate.normalize(data.images)
        keep = _paired(self.coalitions, len(x), self.players, self.generator)
        v_all, v_none = grand_and_null(self.surrogate, x)
        values = coalition_probabilities(self.surrogate, x, keep)
        phi = efficient_normalization(self.net(x), v_all, v_none)
        return shapley_loss(phi, keep, values, v_none)

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """Spearman rank correlation over the patches between the explainer's values and KernelSHAP's
        (``KERNEL_SHAP_SAMPLES`` coalitions, the same game) for the true class of ``RANK_IMAGES`` held-out
        images; beside it, that of two KernelSHAP runs with different seeds (how far KernelSHAP itself is
        from converged), and the largest violation of efficiency."""
        data = shapes(n=RANK_IMAGES, seed=test_seed)
        x, labels = self.surrogate.normalize(data.images), data.labels
        v_all, v_none = grand_and_null(self.surrogate, x)
        phi = efficient_normalization(self.net(x), v_all, v_none)
        ours = phi[torch.arange(len(x)), :, labels]
        runs = [kernel_shap_on_game(self.surrogate, x, labels, KERNEL_SHAP_SAMPLES, seed) for seed in (1, 2)]
        rho = [spearmanr(a, b).statistic for a, b in zip(ours.numpy(), runs[0].numpy())]
        self_rho = [spearmanr(a, b).statistic for a, b in zip(runs[1].numpy(), runs[0].numpy())]
        gap = (phi.sum(1) - (v_all - v_none)).abs().max().item()
        return {"rank_correlation": round(float(torch.tensor(rho).mean()), 4),
                "rank_correlation_min": round(float(min(rho)), 4),
                "kernel_shap_rank_correlation": round(float(torch.tensor(self_rho).mean()), 4),
                "efficiency_error": gap, "images": RANK_IMAGES, "kernel_shap_samples": KERNEL_SHAP_SAMPLES}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        m = meta["metrics"]
        cfg = ARCHITECTURES[recipe.arch]
        return f"""# {name}

The amortised ViT Shapley explainer (Covert, Kim & Lee, ICLR 2023) for `{meta['explains']}`: one forward pass
gives every patch's Shapley value for every class, in the game of the surrogate `{recipe.start}`
(v_y(S) = its probability of class y with the patches outside S held out by attention masking).
Used by `vitx.explain(model, x, "vit-shapley")` for `{meta['explains']}` (and `{recipe.start}`); not a classifier.

## Architecture

A `{recipe.arch}` backbone ({cfg.depth} blocks, {cfg.embed_dim} dimensions, started from `{recipe.start}`'s
weights, its head unused), {EXPLAINER_HEAD['extra_blocks']} further transformer block, a LayerNorm and an MLP of
{EXPLAINER_HEAD['mlp_layers']} linear layers (width {4 * cfg.embed_dim}, GELU) on each patch token, giving
{cfg.num_classes} values per patch; the additive efficient normalisation
φ_i + (v(N) − v(∅) − Σ_j φ_j)/P makes them sum to v(N) − v(∅) for every class
(v(N), v(∅): the surrogate on the whole image and with every patch held out; inference is one explainer
forward and these two surrogate forwards). {sum(p.numel() for p in self.net.parameters()):,} parameters.

## Training

- Command: `{meta['command']}`
- Loss: the mean over coalitions, images and all {cfg.num_classes} classes of (v_y(S) − v_y(∅) − 1_Sᵀ φ_y(x))²,
  {recipe.coalitions} coalitions per image and step drawn from the Shapley kernel in complementary pairs
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as
  for `shapes-vit`); coalitions from `torch.Generator` seeded with the seed
- Steps: {meta['steps']}; AdamW, learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g}, gradient norm
  clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine decay; the head's last layer starts at 0
- Training time: {meta['train_seconds'] / 60:.1f} minutes on a shared 2-core CPU

## Results

On {m['images']} fresh images (data seed {meta['test_seed']}), for each image's true class, Spearman rank
correlation over the 64 patches with KernelSHAP on the same game ({m['kernel_shap_samples']:,} coalitions,
paired sampling): mean **{m['rank_correlation']:.3f}** (lowest image {m['rank_correlation_min']:.3f}).
Two KernelSHAP runs with different seeds agree to {m['kernel_shap_rank_correlation']:.3f} with each other,
a ceiling set by KernelSHAP's own sampling noise. Largest efficiency violation: {m['efficiency_error']:.1e}.

## Intended use and limits

Explains `{meta['explains']}` through its surrogate, on 64x64 shapes images only. Its values are Shapley values
of the surrogate's game, which matches `{meta['explains']}` on whole images but, by design, not the original
classifier's behaviour on images with patches removed.
It refuses any other weights: its metadata records the fingerprints of `{meta['explains']}` and `{recipe.start}`
({', '.join(meta['fingerprints'])}; `vitx.checkpoint.fingerprint`), so a fine-tuned or randomised copy is
not explained with stale values unless `allow_stale=True` says so.
"""
