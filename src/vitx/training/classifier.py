"""The classifier recipes of ``vitx train`` (shapes-vit, shapes-vit-multi, shapes-nest): mimetic initialisation or a
trained start, their scores on fresh shapes images, their model card."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import fingerprint, read_checkpoint
from ..data import CLASS_NAMES, shapes
from ..errors import VitxError
from ..model import Model, evaluating, wrap
from ..models import ARCHITECTURES, HVT, NestConfig, VisionTransformer, create_model
from .recipes import MEAN, STD, TEST_IMAGES, Recipe


class Classifier:
    """A shapes classifier trained from scratch (mimetic initialisation) or from the recipe's ``start``."""

    def __init__(self, recipe: Recipe, out_dir: Path):
        self.recipe = recipe
        self.net = create_model(recipe.arch, **recipe.config)
        if isinstance(self.net, (VisionTransformer, HVT)):
            mimetic_init(self.net)
        if recipe.start:
            start_from(self.net, out_dir / f"{recipe.start}.safetensors")
        self.model = wrap(self.net, mean=MEAN, std=STD, class_names=CLASS_NAMES, multi_label=recipe.multi_label)
        self.loss_fn = F.binary_cross_entropy_with_logits if recipe.multi_label else F.cross_entropy
        self.meta: dict = {}

    def loss(self, data) -> torch.Tensor:
        return self.loss_fn(self.net(self.model.normalize(data.images)), data.labels)

    def score(self, test_seed: int) -> dict:
        return score_shapes(self.model, self.recipe.variant, test_seed)

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return model_card(name, recipe, meta)


def start_from(net, path: Path, head: bool = False) -> None:
    """Load a trained checkpoint's weights into ``net``, all but the classifier head unless ``head``."""
    state, _ = read_checkpoint(require_start(path))
    net.load_state_dict({k: v for k, v in state.items() if head or not k.startswith("head.")}, strict=head)


def frozen(path: Path) -> Model:
    """The trained model at ``path`` (in eval mode, as loaded), its parameters frozen."""
    from ..loading import load_model
    model = load_model(str(require_start(path)))
    model.net.requires_grad_(False)
    return model


def explained(recipe: Recipe, out_dir: Path) -> tuple[Model, dict]:
    """The classifier ``recipe.start`` that a trained module explains, frozen, and the metadata that ties the module
    to its very weights (``explains``, ``fingerprints``: :mod:`vitx.trained`)."""
    model = frozen(out_dir / f"{recipe.start}.safetensors")
    return model, {"explains": recipe.start, "fingerprints": [fingerprint(model.net)]}


def require_start(path: Path) -> Path:
    if not path.exists():
        raise VitxError(f"this recipe starts from {path.name}, which does not exist: train {path.stem} first")
    return path


@torch.no_grad()
def mimetic_init(net, qk=(0.7, 0.7), vo=(0.4, 0.4)) -> None:
    """Start attention where a trained ViT's is (Trockman & Kolter, ICML 2023, Mimetic Initialization of
    Self-Attention Layers), which speeds up training from scratch on small data.

    Per head, W_q^T W_k is the best rank-head_dim approximation of a Z + b I (Z ~ N(0, 1/D)), so tokens
    first attend to tokens like themselves; W_proj W_v = a Z - b I over all heads; the patch position
    embedding starts as a 2D sine-cosine table, so "like themselves" includes "near themselves".
    """
    dim, grid = net.cfg.embed_dim, net.grid_size
    net.pos_embed[0, net.pos_embed.shape[1] - grid[0] * grid[1]:] = sincos_2d(grid, dim)
    noise = lambda: torch.randn(dim, dim) / math.sqrt(dim)
    eye = torch.eye(dim)
    for block in net.blocks:
        attn = block.attn
        wq, wk, wv = attn.qkv.weight.view(3, dim, dim).unbind(0)
        for head in range(attn.num_heads):
            rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
            left, right = _factor(qk[0] * noise() + qk[1] * eye, attn.head_dim)
            wq[rows], wk[rows] = left.T, right.T
        left, right = _factor(vo[0] * noise() - vo[1] * eye, dim)
        attn.proj.weight.copy_(left)
        wv.copy_(right.T)


def _factor(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R), each (n, rank), with L R^T the best rank-``rank`` approximation of ``matrix``."""
    u, s, vh = torch.linalg.svd(matrix)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(gh * gw, dim) position table: sin and cos of x and of y, a quarter of the dims each."""
    y, x = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    freq = 10_000.0 ** -(torch.arange(dim // 4) / (dim // 4))
    ax, ay = x.flatten()[:, None] * freq, y.flatten()[:, None] * freq
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], 1)


@torch.no_grad()
def score_shapes(model: Model, variant: str, seed: int, n: int = TEST_IMAGES, batch_size: int = 250) -> dict:
    """Scores of ``model`` on ``n`` fresh shapes images of ``variant`` drawn with data seed ``seed``.

    single: accuracy of the arg-max class. multi: a class counts as detected when its logit is above 0;
    per-class recall and precision, their minima, and accuracy = the exact-match rate (every class right).
    """
    data = shapes(n=n, seed=seed, variant=variant)
    with evaluating(model):
        logits = torch.cat([model(model.normalize(data.images[i:i + batch_size].to(model.device))).cpu()
                            for i in range(0, n, batch_size)])
    if variant == "single":
        return {"accuracy": round((logits.argmax(1) == data.labels).float().mean().item(), 4)}
    predicted, present = logits > 0, data.labels.bool()
    hits = (predicted & present).sum(0).float()
    recall = hits / present.sum(0).clamp(min=1)
    precision = hits / predicted.sum(0).clamp(min=1)
    names = data.class_names
    return {"accuracy": round((predicted == present).all(1).float().mean().item(), 4),
            "min_recall": round(recall.min().item(), 4), "min_precision": round(precision.min().item(), 4),
            "recall": {names[c]: round(v, 4) for c, v in enumerate(recall.tolist())},
            "precision": {names[c]: round(v, 4) for c, v in enumerate(precision.tolist())}}


def model_card(name: str, recipe: Recipe, meta: dict) -> str:
    """The Markdown model card written next to a checkpoint."""
    cfg = replace(ARCHITECTURES[recipe.arch], **recipe.config)
    grid = cfg.image_size // cfg.patch_size
    overrides = (f"its configuration overridden ({', '.join(f'{k}={v}' for k, v in recipe.config.items())})"
                 if recipe.config else "no overrides of its configuration")
    metrics = meta["metrics"]
    n_test = f"{TEST_IMAGES:,} fresh `{recipe.variant}` images (data seed {meta['test_seed']})"
    if recipe.multi_label:
        task = ("Multi-label: which of the 8 classes are present (2 or 3 per image); a class is detected when "
                "its logit > 0")
        loss = "binary cross-entropy with logits on the multi-hot labels"
        rows = "\n".join(f"| {c} | {metrics['recall'][c]:.3f} | {metrics['precision'][c]:.3f} |" for c in CLASS_NAMES)
        results = (f"On {n_test}: exact-match rate (every class right) **{metrics['accuracy']:.3f}**, "
                   f"lowest per-class recall {metrics['min_recall']:.3f}.\n\n"
                   f"| class | recall | precision |\n|---|---|---|\n{rows}")
    else:
        task = "Single-label: the class of the one object in the image"
        loss = "cross-entropy"
        results = f"On {n_test}: accuracy **{metrics['accuracy']:.3f}**."
    nest = isinstance(cfg, NestConfig)
    if recipe.start:
        init = (f"Start: the trained weights of `{recipe.start}` (all but its head, which starts afresh); "
                f"train `{recipe.start}` first")
    elif nest:
        init = "Initialisation: as the architecture initialises itself (truncated normal, std 0.02; biases 0)"
    else:
        init = ("Initialisation: mimetic (Trockman & Kolter, ICML 2023): per head W_q^T W_k ~ 0.7 Z + 0.7 I,\n"
                "  W_proj W_v ~ 0.4 Z - 0.4 I, patch position embeddings from a 2D sine-cosine table; other weights\n"
                "  as the architecture initialises them")
    if nest:
        kind = "nested hierarchical transformer (NesT, Zhang et al., AAAI 2022)"
        body = (f"`{recipe.arch}` (vitx's own NesT), with {overrides}: {cfg.image_size}x"
                f"{cfg.image_size} input, {cfg.patch_size}x{cfg.patch_size} patches ({grid} x {grid}), {cfg.num_levels} "
                f"levels of blocks of {cfg.block_size}x{cfg.block_size} positions\n"
                f"({', '.join(str(4 ** (cfg.num_levels - 1 - level)) for level in range(cfg.num_levels))} blocks), dimensions "
                f"{cfg.embed_dims}, transformer layers {cfg.depths}, heads {cfg.num_heads}, MLP ratio {cfg.mlp_ratio:g};\n"
                "block aggregation by 3x3 convolution, LayerNorm and 3x3 max-pool with stride 2; head: LayerNorm, "
                "mean, linear")
    else:
        kind = "Vision Transformer"
        stem = (f",\nembedded by a convolutional stem ({cfg.patch_size.bit_length() - 1} stride-2 3x3 conv-BatchNorm-"
                "ReLU stages and a 1x1 projection;\nXiao et al., NeurIPS 2021) instead of one linear patch projection"
                if cfg.stem == "conv" else "")
        body = (f"`{recipe.arch}` (vitx's own ViT), with {overrides}: {cfg.image_size}x"
                f"{cfg.image_size} input,\n{cfg.patch_size}x{cfg.patch_size} patches ({grid} x {grid} patch tokens "
                f"and a class token){stem},\n{cfg.embed_dim} dimensions, {cfg.depth} blocks, {cfg.num_heads} heads, "
                f"MLP ratio {cfg.mlp_ratio:g}")
    return f"""# {name}

A small {kind} trained on vitx's procedural shapes data, shipped so that
explanation methods can be scored against pixel-exact ground truth. Load it with
`vitx.load_model("{name}")`.

## Architecture

{body},
{sum(p.numel() for p in create_model(recipe.arch, **recipe.config).parameters()):,} parameters.
Input normalisation: mean {meta['mean']}, std {meta['std']}.

## Task and data

{task}. Classes: {', '.join(CLASS_NAMES)}.
Data: `vitx.data.shapes(variant="{recipe.variant}")`, 64x64, a fresh batch of {meta['batch_size']} images
at every step (step k draws data seed 1,000,000 x (seed + 1) + k; no image is seen twice and no data
seed below 1,000,000 is used for training). No augmentation.

## Training

- Command: `{meta['command']}`
- Seed: {meta['seed']} (`torch.manual_seed`; the data seeds follow from it)
- Steps: {meta['steps']} at batch size {meta['batch_size']} ({meta['steps'] * meta['batch_size']:,} images)
- Loss: {loss}
- {init}
- Optimiser: AdamW, learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g}, gradient norm clipped
  at {recipe.clip:g}; linear warm-up over {recipe.warmup:.0%} of the steps, then cosine decay to zero
- Training time: {meta['train_seconds'] / 60:.1f} minutes on a shared 2-core CPU

## Results

{results}

## Intended use and limits

A test subject for explanation methods and their metrics (`vitx bench`), and a quick model for
examples and tests. It knows only this synthetic world: 64x64 images of one ({'2-3' if recipe.multi_label else '1'})
solid shape(s) on a textured, cluttered background. It says nothing useful about natural images,
other sizes, or shapes outside its 8 classes (it will still name one of them).
"""
