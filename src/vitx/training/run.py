"""The training loop of ``vitx train``: one optimiser and schedule for every recipe (:mod:`vitx.training.recipes`),
the step batches drawn by seed, the checkpoint and model card written at the end."""
from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import save_checkpoint
from ..data import CLASS_NAMES, shapes
from ..errors import VitxError
from ..zoo import ZOO_DIR
from ..models import ARCHITECTURES, HVTConfig
from .classifier import Classifier
from .hvt import HierarchicalClassifier
from .draws import step_batches
from .recipes import _TEST_SEED, _TRAIN_SEED_STRIDE, MEAN, RECIPES, STD, Recipe


def train(name: str, out_dir=ZOO_DIR, *, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
          progress: bool = True, recipe: Recipe | None = None, config: dict | None = None, workers: int = 0,
          device: str | None = None) -> dict:
    """Train recipe ``name`` (a key of RECIPES), save ``<out_dir>/<name>.safetensors`` and its model
    card ``<name>.md``, and return the test metrics. A study passes its own variant of the recipe as
    ``recipe`` (for instance ``dataclasses.replace(RECIPES[name], fd_every=100)``); ``name`` still names
    the files. ``config`` overrides fields of a classifier's architecture (e.g. ``{"patch_size": 2}``).
    ``workers`` processes draw the step batches ahead (0: in this process); ``device`` (the recipes of
    DEVICE_KINDS; default cpu) is where the model trains, the data being drawn on the CPU."""
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
        job = (HierarchicalClassifier if isinstance(ARCHITECTURES[recipe.arch], HVTConfig) else Classifier)(recipe, out_dir)
    elif recipe.kind == "vqa":
        from .vqa import QuestionAnswerer
        job = QuestionAnswerer(recipe, out_dir, seed, test_seed, workers)
    elif recipe.kind == "detr":
        from .detr import Detector
        job = Detector(recipe, out_dir)
    elif recipe.kind == "clip":
        from .clip import ImageText
        job = ImageText(recipe, out_dir)
    elif recipe.kind in ("dynamicvit", "evit"):
        from .pruning import PrunedTwin
        job = PrunedTwin(recipe, out_dir, steps)
    elif recipe.kind == "iared2":
        from .iared2 import IARed2Trainer
        job = IARed2Trainer(recipe, out_dir, steps)
    elif recipe.kind == "vitnet":
        from .vitnet import TreeTrainer
        job = TreeTrainer(recipe, out_dir, seed, steps, batch_size)
    elif recipe.kind == "slimming":
        from .slimming import SlimmingTrainer
        job = SlimmingTrainer(recipe, out_dir, seed, steps)
    elif recipe.kind == "diffmask":
        from .diffmask import Masker
        job = Masker(recipe, out_dir, seed)
    elif recipe.kind == "xpruner":
        from .xpruner import XPruner
        job = XPruner(recipe, out_dir, seed, batch_size)
    elif recipe.kind == "exvit":
        from .exvit import ExViTTrainer
        job = ExViTTrainer(recipe, out_dir)
    elif recipe.kind == "dino":
        from .dino import DINOTrainer
        job = DINOTrainer(recipe, out_dir, seed, steps)
    elif recipe.kind == "concepts":
        from .concepts import ConceptTrainer
        job = ConceptTrainer(recipe, out_dir)
    elif recipe.kind == "generator":
        from .gan import Generator
        job = Generator(recipe, out_dir, seed)
    else:
        from .shapley import Explainer, Surrogate
        job = (Surrogate if recipe.kind == "surrogate" else Explainer)(recipe, out_dir, seed)

    if recipe.kind in DEVICE_KINDS:
        job.to(device)
    job.net.train()
    groups = job.param_groups(recipe.lr) if hasattr(job, "param_groups") else job.net.parameters()
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=recipe.betas)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, _warmup_cosine(steps, recipe.warmup))
                 for o in (optimizer, getattr(job, "d_optimizer", None)) if o is not None]
    start = time.perf_counter()
    draw = getattr(job, "draw", partial(shapes, variant=recipe.variant))   # what a step's data is drawn with
    seeds = [_TRAIN_SEED_STRIDE * (seed + 1) + step for step in range(steps)]
    if recipe.pool:
        from .vqa import pool_batches, question_pool
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


DEVICE_KINDS = ("vqa", "detr", "clip", "dynamicvit", "evit")   # recipes whose job can train on any device (a .to(device))


def training_device(device: str | None, name: str, kind: str) -> torch.device:
    """The torch device ``device`` names (default cpu); only the recipes of DEVICE_KINDS train off the CPU."""
    try:
        parsed = torch.device(device or "cpu")
    except (RuntimeError, ValueError):
        raise VitxError(f"unknown device {device!r} (expected e.g. cpu or cuda)") from None
    if parsed.type != "cpu" and kind not in DEVICE_KINDS:
        raise VitxError(f"{name!r} trains on the CPU only; device {device!r} is for the VQA, detector, image-text "
                        "and pruned-twin recipes")
    return parsed


def device_name(device: torch.device) -> str:
    """What ran a training, for its model card."""
    if device.type == "cuda":
        return f"one {torch.cuda.get_device_name(device)} (data drawn on the CPU)"
    threads = torch.get_num_threads()
    return f"{device.type.upper()} ({threads} torch thread{'' if threads == 1 else 's'})"


def _warmup_cosine(steps: int, warmup: float):
    warm = max(1, round(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
    return factor

