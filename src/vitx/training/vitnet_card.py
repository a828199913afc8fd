"""The model card of ``shapes-vit-net`` (:mod:`vitx.training.vitnet`)."""
from __future__ import annotations

from ..data import CLASS_NAMES
from .recipes import TEST_IMAGES, Recipe

BACKBONE_LR = 0.1        # the backbone's learning rate, a share of the recipe's (the new tree takes it whole)
PROJECTION_STEPS = 8     # the prototypes are projected onto the patches of the last steps' training batches


def vitnet_card(name: str, recipe: Recipe, meta: dict, cfg) -> str:
    m = meta["metrics"]
    internal, leaves, side = 2 ** cfg.tree_depth - 1, 2 ** cfg.tree_depth, cfg.image_size // cfg.patch_size
    sources = "\n".join(f"| {i} | {s} | {im} | {p} ({p // side}, {p % side}) | {d:.3f} |" for i, ((s, im, p), d) in
                        enumerate(zip(m["prototype_source"], m["projection_distance"])))
    usage = "\n".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(CLASS_NAMES, m["leaf_usage"]))
    return f"""# {name}

ViT-NeT (Kim et al., ICML 2022, ViT-NeT: Interpretable Vision Transformers with Neural Tree Decoder) on the shapes
data: `{recipe.start}`'s ViT (`vitx_shapes`; the paper uses Swin) with a neural tree decoder as its head
(`vitx.models.vitnet`). Load it with `vitx.load_model("{name}")`; `vitx.explain(model, x, method="vit-net")` gives
the hard path with its prototypes and similarity maps.

## Architecture

`{recipe.arch}`: `vitx_shapes` ({cfg.embed_dim} dimensions, {cfg.depth} blocks, 8x8 patches, 64 patch tokens and a
class token) and a complete binary tree of depth **{cfg.tree_depth}**: **{internal} prototypes** (one per internal
node, 1x1 patches of {cfg.tree_dim} dimensions) and {leaves} leaves. Each node has its own feature stream (the root's:
a sigmoid of a linear map of the final patch tokens; a child's: its parent's through a context block); node i goes
left with probability max_n exp(−‖z^i_n − p_i‖); leaf ℓ's class distribution is softmax(LN(V_ℓ max_n z^ℓ_n + y)),
y the backbone's logits. Soft routing while training, the hard path (left where that probability > 1/2) at inference.

## Training

- Command: `{meta['command']}`
- Start: every weight of `{recipe.start}` (its head too: the leaves add its logits); the tree initialised afresh
  (prototypes N(0.5, 0.1), as the authors')
- Loss: negative log-likelihood of the soft routing's mixture Σ_ℓ π_ℓ q_ℓ (the authors' loss); the stem's
  BatchNorm keeps `{recipe.start}`'s statistics
- Data: `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} at every step (data seeds as for
  `shapes-vit`: 1,000,000 x (seed + 1) + step)
- AdamW, learning rate {recipe.lr:g} for the tree, {recipe.lr * BACKBONE_LR:g} for the backbone, weight decay
  {recipe.weight_decay:g}, gradient norm clipped at {recipe.clip:g}, {recipe.warmup:.0%} linear warm-up then cosine
  decay
- Then the projection: each prototype replaced by the nearest patch feature of its own node's stream among the
  training images of the last {PROJECTION_STEPS} steps
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}, a shared 2-core machine

## Results

On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}): accuracy with the hard path **{m['accuracy']:.3f}**
(before the projection {m['hard_accuracy_before_projection']:.3f}), with soft routing {m['soft_accuracy']:.3f};
`{recipe.start}` on the same images: {m['reference_accuracy']:.3f}.

Where each prototype was projected (`shapes(n={meta['batch_size']}, seed=...)[image]`, patch index row-major on the
{side}x{side} grid, and how far the prototype moved):

| node | data seed | image | patch (row, col) | distance moved |
|---:|---:|---:|---:|---:|
{sources}

Which leaf the hard path reaches, per true class (columns: leaves 0-{leaves - 1}, left to right):

| class | {' | '.join(str(i) for i in range(leaves))} |
|---|{'---:|' * leaves}
{usage}

## Intended use and limits

An inherently explainable shapes classifier, for the method `vit-net` and as a subject for the other methods (it is
a `VisionTransformer`). 64x64 shapes images only.
"""
