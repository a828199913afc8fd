"""``vitx train``: the recipes behind the zoo's checkpoints, reproducible from a seed.

Data is drawn fresh at every step from :func:`vitx.data.shapes` (:func:`vitx.data.shapes_vqa` for the VQA
recipes): step ``k`` of a run with seed ``s`` uses the images of data seed ``1_000_000 * (s + 1) + k``, so
training never sees a data seed below 1,000,000 and every smaller seed (such as the test seed ``10_000 + s``)
holds fresh images. The step batches can be drawn ahead by worker processes; the data are the same either way.
A recipe with a ``pool`` (the VQA recipes, whose generator is ten times slower) draws that many items once instead,
chunk ``j`` of 1,000 from data seed ``1_000_000 * (s + 1) + j``, and samples its batches from them in shuffled
epochs (:mod:`vitx.vqa_training`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, save_checkpoint
from .draws import step_batches
from .data import CLASS_NAMES, shapes
from .errors import VitxError
from .model import Model, evaluating, wrap
from .models import ARCHITECTURES, NestConfig, VisionTransformer, create_model
from .zoo import ZOO_DIR

MEAN, STD = (0.5,) * 3, (0.25,) * 3
TEST_IMAGES = 1000
_TRAIN_SEED_STRIDE = 1_000_000  # data seeds of training runs start here; smaller seeds are for testing
_TEST_SEED = 10_000             # + the run's seed: the data seed of its test set


@dataclass(frozen=True)
class Recipe:
    arch: str
    variant: str           # shapes variant: "single" (cross-entropy) or "multi" (multi-label BCE)
    steps: int
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: float = 0.05   # fraction of the steps with a linear warm-up, then cosine decay to zero
    clip: float = 1.0      # gradient-norm clipping
    start: str | None = None  # a recipe whose trained weights start this one
    kind: str = "classifier"  # or "surrogate" (of ``start``), "shapley-explainer" (of the surrogate ``start``),
                              # "generator" (a GAN generator; ``arch`` "nest" or "conv"), "vqa" (on shapes_vqa)
    batch_size: int = 128
    coalitions: int = 0    # shapley-explainer: coalitions per image and step, in complementary pairs
    betas: tuple[float, float] = (0.9, 0.999)  # Adam(W)'s
    fd_every: int = 0      # generator: steps between Fréchet distances recorded
    config: dict = field(default_factory=dict)  # classifier: overrides of the architecture's configuration
    pool: int = 0          # vqa: items drawn once and sampled in shuffled epochs (0: a fresh batch every step)

    @property
    def multi_label(self) -> bool:
        return self.variant == "multi"


RECIPES = {
    "shapes-vit": Recipe("vitx_shapes", "single", steps=6000, lr=1e-3),
    "shapes-vit-multi": Recipe("vitx_shapes", "multi", steps=2400, lr=5e-4, start="shapes-vit"),
    "shapes-nest": Recipe("nest_shapes", "single", steps=3000, lr=1e-3),
    "shapes-nest-gan": Recipe("nest", "single", steps=1500, lr=2e-4, weight_decay=0.0, clip=math.inf,
                              kind="generator", batch_size=64, betas=(0.5, 0.999), fd_every=250),
    "shapes-conv-gan": Recipe("conv", "single", steps=1500, lr=2e-4, weight_decay=0.0, clip=math.inf,
                              kind="generator", batch_size=64, betas=(0.5, 0.999), fd_every=250),
    "shapes-vit-surrogate": Recipe("vitx_shapes", "single", steps=1200, lr=2e-4, start="shapes-vit",
                                   kind="surrogate", batch_size=64),
    "shapes-vit-shapley": Recipe("vitx_shapes", "single", steps=1200, lr=2e-4, start="shapes-vit-surrogate",
                                 kind="shapley-explainer", batch_size=32, coalitions=8),
    "shapes-vqa-single": Recipe("vqa_shapes_single", "vqa", steps=7500, lr=1e-3, start="shapes-vit", kind="vqa",
                                batch_size=256, pool=200_000),
    "shapes-vqa-dual": Recipe("vqa_shapes_dual", "vqa", steps=7500, lr=1e-3, start="shapes-vit", kind="vqa",
                              batch_size=256, pool=200_000),
    "shapes-detr": Recipe("detr_shapes", "multi", steps=6000, lr=5e-4, start="shapes-vit-multi", kind="detr",
                          batch_size=32),
}


def train(name: str, out_dir=ZOO_DIR, *, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
          progress: bool = True, recipe: Recipe | None = None, config: dict | None = None, workers: int = 0,
          device: str | None = None) -> dict:
    """Train recipe ``name`` (a key of RECIPES), save ``<out_dir>/<name>.safetensors`` and its model
    card ``<name>.md``, and return the test metrics. A study passes its own variant of the recipe as
    ``recipe`` (for instance ``dataclasses.replace(RECIPES[name], fd_every=100)``); ``name`` still names
    the files. ``config`` overrides fields of a classifier's architecture (e.g. ``{"patch_size": 2}``).
    ``workers`` processes draw the step batches ahead (0: in this process); ``device`` (VQA recipes; default
    cpu) is where the model trains, the data being drawn on the CPU."""
    if name not in RECIPES:
        raise VitxError(f"no training recipe named {name!r}; recipes: {', '.join(RECIPES)}")
    recipe = RECIPES[name] if recipe is None else recipe
    if config:
        if recipe.kind != "classifier":
            raise VitxError(f"config overrides a classifier's architecture; {name!r} trains a {recipe.kind}")
        recipe = replace(recipe, config={**recipe.config, **config})
    steps = recipe.steps if steps is None else steps
    batch_size = recipe.batch_size if batch_size is None else batch_size
    for label, value, low in (("seed", seed, 0), ("steps", steps, 1), ("batch_size", batch_size, 1),
                              ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise VitxError(f"{label} must be an integer >= {low}, got {value!r}")
    if steps >= _TRAIN_SEED_STRIDE:
        raise VitxError(f"steps must be below {_TRAIN_SEED_STRIDE:,}, got {steps}")
    device = training_device(device, name, recipe.kind)
    out_dir = Path(out_dir)
    test_seed = _TEST_SEED + seed
    torch.manual_seed(seed)
    if recipe.kind == "classifier":
        job = Classifier(recipe, out_dir)
    elif recipe.kind == "vqa":
        from .vqa_training import QuestionAnswerer, answer_batch
        job = QuestionAnswerer(recipe, out_dir, seed, test_seed, workers)
        job.to(device)
    elif recipe.kind == "detr":
        from .detr_training import Detector
        job = Detector(recipe, out_dir)
        job.to(device)
    elif recipe.kind == "generator":
        from .gan import Generator
        job = Generator(recipe, out_dir, seed)
    else:
        from .shapley_training import Explainer, Surrogate
        job = (Surrogate if recipe.kind == "surrogate" else Explainer)(recipe, out_dir, seed)

    job.net.train()
    optimizer = torch.optim.AdamW(job.net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=recipe.betas)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, _warmup_cosine(steps, recipe.warmup))
                 for o in (optimizer, getattr(job, "d_optimizer", None)) if o is not None]
    start = time.perf_counter()
    draw = answer_batch if recipe.kind == "vqa" else partial(shapes, variant=recipe.variant)
    seeds = [_TRAIN_SEED_STRIDE * (seed + 1) + step for step in range(steps)]
    if recipe.pool:
        from .vqa_training import pool_batches, question_pool
        batches = pool_batches(question_pool(recipe.pool, seed, workers, out_dir / ".cache"), batch_size, steps, seed,
                               device)
    else:
        batches = step_batches(draw, seeds, batch_size, workers)
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress)
    for step, data in zip(bar, batches):
        loss = job.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(job.net.parameters(), recipe.clip)
        optimizer.step()
        for schedule in schedules:
            schedule.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4g}")
    seconds = time.perf_counter() - start
    job.net.eval()

    metrics = job.score(test_seed)
    command = f"vitx train {name} --seed {seed} --steps {steps} --batch-size {batch_size}"
    command += "".join(f' --config "{key}={value}"' for key, value in recipe.config.items())
    command += (f" --device {device}" if device.type != "cpu" else "") + (f" --workers {workers}" if workers else "")
    if out_dir.resolve() != ZOO_DIR.resolve():
        command += f" --out {out_dir}"
    meta = {"arch": recipe.arch, "config": dict(recipe.config), "mean": MEAN, "std": STD, "class_names": CLASS_NAMES,
            "multi_label": recipe.multi_label, "dataset": f"shapes/{recipe.variant} 64px", "metrics": metrics,
            "seed": seed, "test_seed": test_seed, "steps": steps, "batch_size": batch_size, "command": command,
            "train_seconds": round(seconds, 1), "train_device": device_name(device), "start": recipe.start,
            **job.meta}
    save_checkpoint(job.net, out_dir / f"{name}.safetensors", meta)
    (out_dir / f"{name}.md").write_text(job.card(name, recipe, meta))
    return metrics


def training_device(device: str | None, name: str, kind: str) -> torch.device:
    """The torch device ``device`` names (default cpu); only the VQA recipes train off the CPU."""
    try:
        parsed = torch.device(device or "cpu")
    except (RuntimeError, ValueError):
        raise VitxError(f"unknown device {device!r} (expected e.g. cpu or cuda)") from None
    if parsed.type != "cpu" and kind not in ("vqa", "detr"):
        raise VitxError(f"{name!r} trains on the CPU only; device {device!r} is for the VQA and detector recipes")
    return parsed


def device_name(device: torch.device) -> str:
    """What ran a training, for its model card."""
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)} (data drawn on the CPU)"
    return f"{device.type.upper()} ({torch.get_num_threads()} torch threads)"


class Classifier:
    """A shapes classifier trained from scratch (mimetic initialisation) or from the recipe's ``start``."""

    def __init__(self, recipe: Recipe, out_dir: Path):
        self.recipe = recipe
        self.net = create_model(recipe.arch, **recipe.config)
        if isinstance(self.net, VisionTransformer):
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


def _warmup_cosine(steps: int, warmup: float):
    warm = max(1, round(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
    return factor


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
