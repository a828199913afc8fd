"""The Concept Transformer recipe of ``vitx train`` (shapes-vit-concepts; Rigotti et al., ICLR 2022): ``shapes-vit``'s
body with a concept head (:mod:`vitx.models.concepts`), fine-tuned on the shapes concepts (:mod:`vitx.data.concepts`)
with cross-entropy plus λ times the authors' explanation loss; scored for class accuracy beside ``shapes-vit`` and for
the agreement of its concept attention with the concept labels; described by its model card."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import read_checkpoint, save_checkpoint
from ..data.concepts import GLOBAL_CONCEPTS, GROUPS, SPATIAL_CONCEPTS, shapes_concepts
from ..model import evaluating
from ..models import create_model
from ..zoo import zoo_path
from .classifier import Classifier, frozen, score_shapes
from .recipes import RECIPES, TEST_IMAGES, Recipe

KIND = "concepts"
HEAD_LR = 20.0   # the concept heads' learning rate, a multiple of the recipe's (the body's, which starts trained)


def explanation_loss(attention: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The authors' concept cost (``concepts_cost`` and ``spatial_concepts_cost`` in ``ctc/ctc.py``): the attention
    averaged over heads (..., C) against the targets normalised to sum 1 per row, C x the mean squared error. Rows
    without a target (all zero) are left out."""
    labelled = targets.sum(-1) > 0
    goal = targets[labelled] / targets[labelled].sum(-1, keepdim=True)
    return targets.shape[-1] * F.mse_loss(attention[labelled], goal)


def concept_losses(net, x: torch.Tensor, data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy, the global and the spatial explanation loss of ``net`` on images ``x`` with ``data``'s labels."""
    out = net.concepts(x)
    spatial = F.one_hot(data.spatial_concepts, len(SPATIAL_CONCEPTS)).to(x.dtype)
    return (F.cross_entropy(out.logits, data.labels),
            explanation_loss(out.global_attention.mean(1), data.global_concepts),
            explanation_loss(out.spatial_attention.mean(1), spatial))


@torch.no_grad()
def concept_scores(net, x: torch.Tensor, data, batch_size: int = 250) -> dict:
    """Agreement of the concept attention (averaged over heads) with the labels. Global, per group of GROUPS: the share
    of the images labelled in the group whose most attended concept of the group is the labelled one. Spatial: the
    share of patches whose most attended concept is their label, overall and per concept (recall)."""
    outs = [net.concepts(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    attention = torch.cat([o.global_attention.mean(1) for o in outs])
    spatial = torch.cat([o.spatial_attention.mean(1) for o in outs]).argmax(-1)
    groups = {}
    for group, members in GROUPS.items():
        labels = data.global_concepts[:, members]
        labelled = labels.sum(1) > 0
        hits = attention[:, members].argmax(1) == labels.argmax(1)
        groups[group] = round(hits[labelled].float().mean().item(), 4)
    truth = data.spatial_concepts
    recall = {name: round((spatial[truth == c] == c).float().mean().item(), 4)
              for c, name in enumerate(SPATIAL_CONCEPTS) if (truth == c).any()}
    return {"global_top1": groups, "global_top1_min": min(groups.values()),
            "spatial_top1": round((spatial == truth).float().mean().item(), 4), "spatial_recall": recall}


class ConceptTrainer(Classifier):
    """``recipe.start``'s weights (all but its head) under a fresh concept head, trained with cross-entropy plus
    ``recipe.explanation`` x the global and spatial explanation losses."""

    def __init__(self, recipe: Recipe, out_dir):
        super().__init__(recipe, out_dir)
        self.draw = partial(shapes_concepts, grid=self.net.grid_size[0])
        self.meta = {"kind": KIND, "explanation_weight": recipe.explanation}

    def param_groups(self, lr: float) -> list[dict]:
        heads = [*self.net.global_head.parameters(), *self.net.spatial_head.parameters()]
        body = [p for name, p in self.net.named_parameters() if not name.startswith(("global_head.", "spatial_head."))]
        return [{"params": body}, {"params": heads, "lr": lr * HEAD_LR}]

    def loss(self, data) -> torch.Tensor:
        self.net.patch_embed.eval()    # the stem's BatchNorm keeps shapes-vit's statistics
        ce, global_loss, spatial_loss = concept_losses(self.net, self.model.normalize(data.images), data)
        return ce + self.recipe.explanation * (global_loss + spatial_loss) if self.recipe.explanation else ce

    def score(self, test_seed: int) -> dict:
        """On TEST_IMAGES fresh images: accuracy beside ``recipe.start``'s on the same images, and the concept
        attention's agreement with the labels (:func:`concept_scores`)."""
        data = shapes_concepts(TEST_IMAGES, test_seed, grid=self.net.grid_size[0])
        with evaluating(self.model):
            scores = concept_scores(self.net, self.model.normalize(data.images), data)
        reference = score_shapes(frozen(zoo_path(self.recipe.start)), "single", test_seed)["accuracy"]
        return {**score_shapes(self.model, "single", test_seed), "reference_accuracy": reference, **scores}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return concept_card(name, recipe, meta)


def add_study(path, study_path) -> None:
    """Record in the checkpoint at ``path`` (written by ``vitx train``) the metrics and command of the same recipe's
    study run at ``study_path`` (trained with another λ, not shipped), and rewrite its model card with them."""
    state, meta = read_checkpoint(path)
    _, study = read_checkpoint(study_path)
    meta["study"] = {"metrics": study["metrics"], "command": study["command"],
                     "explanation_weight": study["explanation_weight"], "train_seconds": study["train_seconds"]}
    net = create_model(meta["arch"], **meta["config"])
    net.load_state_dict(state)
    save_checkpoint(net, path, meta)
    name = Path(path).stem
    Path(path).with_suffix(".md").write_text(concept_card(name, RECIPES[name], meta))


def concept_card(name: str, recipe: Recipe, meta: dict) -> str:
    m = meta["metrics"]
    groups = ", ".join(f"{group} **{value:.3f}**" for group, value in m["global_top1"].items())
    recall = ", ".join(f"{concept} {value:.3f}" for concept, value in m["spatial_recall"].items())
    study = meta.get("study", {})
    without = ""
    if study:
        s = study["metrics"]
        without = (f"\n\nThe same recipe with λ = {study['explanation_weight']:g} (`{study['command']}` with the "
                   f"recipe's `explanation` set to {study['explanation_weight']:g}; a study run, not shipped, "
                   f"{study['train_seconds'] / 60:.1f} minutes): accuracy {s['accuracy']:.3f}; global concepts top-1 "
                   + ", ".join(f"{g} {v:.3f}" for g, v in s["global_top1"].items())
                   + f"; spatial concepts per patch {s['spatial_top1']:.3f}.")
    return f"""# {name}

A Concept Transformer (Rigotti et al., ICLR 2022, Attention-based Interpretability with Concept Transformers) on
`{recipe.start}`: its ViT body with a head of concept cross-attention whose logits are linear in the concept attention
(`vitx.models.concepts`). Load it with `vitx.load_model("{name}")`; explain it with
`vitx.explain(model, x, method="concept-transformer")` (docs/inherent.md).

## Architecture

`{recipe.arch}`: `vitx_shapes` (64x64 input, 8x8 patches, 96 dimensions, 6 blocks, 4 heads) whose linear head is
replaced by two concept heads of one attention head each: the class token attends to {len(GLOBAL_CONCEPTS)} global
concepts ({', '.join(GLOBAL_CONCEPTS)}), each patch token to {len(SPATIAL_CONCEPTS)} spatial concepts
({', '.join(SPATIAL_CONCEPTS)}); logits = out_global(cls) + mean over patches of out_spatial(patch).

## Training

- Command: `{meta['command']}`
- Start: every weight of `{recipe.start}` but its head; the concept heads start afresh; the stem's BatchNorm
  statistics are kept
- Loss: cross-entropy + λ (L_global + L_spatial), λ = {recipe.explanation:g} (the authors' default for their MNIST
  task), L = C x the mean squared error between the concept attention and the labels normalised to sum 1 (the
  authors' `concepts_cost`); images whose colour is a near-tie carry no colour label
- Data: `vitx.data.concepts.shapes_concepts`, a fresh batch of {meta['batch_size']} single-object images at every step
  (data seeds 1,000,000 x (seed + 1) + step), {meta['steps']} steps
- AdamW, learning rate {recipe.lr:g} for the body, {recipe.lr * HEAD_LR:g} for the concept heads, weight decay
  {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine decay
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}, a shared 2-core machine

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}): accuracy **{m['accuracy']:.3f}** (`{recipe.start}`:
{m['reference_accuracy']:.3f} on the same images). Global concept attention, top-1 within each group against the
labels: {groups}. Spatial concept attention, top-1 per patch: **{m['spatial_top1']:.3f}** (recall per concept:
{recall}).{without}

## Intended use and limits

A model whose explanation is part of its prediction, on 64x64 single-object shapes images only. The global concepts
other than colour follow from the class, so the global attention says which class features the model names, not
what it saw beyond the class.
"""
