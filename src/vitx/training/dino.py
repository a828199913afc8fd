"""The DINO recipe of ``vitx train`` (shapes-vit-dino): self-distillation with no labels (Caron et al., ICCV 2021,
Emerging Properties in Self-Supervised Vision Transformers; the rules of facebookresearch/dino's main_dino.py,
utils.py and vision_transformer.py, re-implemented), then probes fitted on the frozen teacher.

A student g_s and a teacher g_t share one architecture: the ViT backbone's class token, then the projection head (a
3-layer MLP with GELU to a bottleneck, L2-normalised, then a weight-normalised linear layer with its norms fixed at 1).
Per image, two global views x_1, x_2 and L local views (:mod:`vitx.training.crops`); the teacher sees the globals only,
the student every view. With the centre c and temperatures τ_t, τ_s:

    P_t(x) = softmax((g_t(x) − c) / τ_t)   (centring, then sharpening: τ_t < τ_s)
    P_s(x) = softmax(g_s(x) / τ_s)
    loss = mean over pairs (x ∈ {x_1, x_2}, x' any view ≠ x) of  −Σ_k P_t(x)_k log P_s(x')_k

then after each optimiser step θ_t ← m θ_t + (1 − m) θ_s (m: cosine from 0.996 to 1 over the run) and
c ← 0.9 c + 0.1 · mean of g_t over the batch's global views. τ_t = 0.04 (the authors' default; their README's
warm-up to 0.07 over 30 epochs left a run of 850 steps at the uniform loss, log K: docs/inherent.md), τ_s = 0.1; the last layer's gradients are dropped during the first 1% of the steps (the authors' first
epoch). Differs from the authors: a fixed weight decay (theirs rises 0.04 -> 0.4 by cosine), no stochastic depth, the
teacher's EMA applied at the start of the next step's loss (the same sequence of weights) and once before scoring.

The checkpoint is the teacher's backbone (what the paper evaluates) with its ``head`` a linear probe fitted afterwards
on frozen class-token features of labelled images; the k-NN probe is the authors' weighted vote (k 20, T 0.07).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import CLASS_NAMES, shapes
from ..model import evaluating, wrap
from ..models import create_model
from .classifier import mimetic_init, model_card, score_shapes
from .crops import GLOBAL_SCALE, LOCAL_SCALE, multi_crop
from .recipes import _TRAIN_SEED_STRIDE, MEAN, STD, TEST_IMAGES, Recipe

OUT_DIM, HIDDEN, BOTTLENECK = 1024, 512, 128     # the authors': 65,536, 2,048 and 256 for ViT-S's 384 dims
LOCAL_CROPS, GLOBAL_SIZE, LOCAL_SIZE = 6, 64, 32
TEACHER_TEMP, WARMUP_TEACHER_TEMP, STUDENT_TEMP = 0.04, 0.04, 0.1   # the authors' default τ_t: see the doc
TEMP_WARMUP, FREEZE_LAST = 0.3, 0.01             # shares of the run: τ_t warm-up, last layer frozen
MOMENTUM, CENTER_MOMENTUM = 0.996, 0.9
PROBE_IMAGES, KNN_K, KNN_T = 5000, 20, 0.07


class DINOHead(nn.Module):
    """The projection head: Linear-GELU-Linear-GELU-Linear to the bottleneck, L2 normalisation, then a linear layer
    whose rows are normalised to unit length (weight normalisation with g fixed at 1), no bias."""

    def __init__(self, dim: int, out_dim: int = OUT_DIM, hidden: int = HIDDEN, bottleneck: int = BOTTLENECK):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.kaiming_uniform_(self.last, a=math.sqrt(5))          # nn.Linear's initialisation

    def forward(self, x: torch.Tensor, freeze_last: bool = False) -> torch.Tensor:
        last = self.last.detach() if freeze_last else self.last
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(last, dim=-1))


class DINONet(nn.Module):
    """Backbone (class token after the final norm) and projection head; its ``backbone.head`` is not used here."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, DINOHead(backbone.cfg.embed_dim)

    def forward(self, views: list[torch.Tensor], freeze_last: bool = False) -> torch.Tensor:
        """Views of one size at a time through the backbone (the authors' MultiCropWrapper), all through the head."""
        sizes = [v.shape[-1] for v in views]
        runs = [torch.cat([v for v in views if v.shape[-1] == s]) for s in dict.fromkeys(sizes)]
        tokens = torch.cat([self.backbone.forward_features(run)[:, 0] for run in runs])
        return self.head(tokens, freeze_last)


def teacher_targets(teacher_out: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centred and sharpened teacher probabilities softmax((g_t − c) / τ_t), detached."""
    return F.softmax((teacher_out - center) / temperature, dim=-1).detach()


def dino_loss(student_out: torch.Tensor, targets: torch.Tensor, views: int, student_temp: float = STUDENT_TEMP):
    """Mean cross-entropy −Σ P_t log P_s over every (teacher global view, student view) pair of different views.
    ``student_out``: (views · B, K), view-major; ``targets``: (2 · B, K), the two global views first, likewise."""
    log_p = F.log_softmax(student_out / student_temp, dim=-1).chunk(views)
    terms = [(-q * log_p[v]).sum(-1).mean() for i, q in enumerate(targets.chunk(2))
             for v in range(views) if v != i]
    return torch.stack(terms).mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = CENTER_MOMENTUM) -> torch.Tensor:
    """c ← m c + (1 − m) · mean of the teacher's outputs over the batch."""
    return center * momentum + teacher_out.mean(0, keepdim=True) * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """θ_t ← m θ_t + (1 − m) θ_s over the parameters (buffers, such as BatchNorm's statistics, stay the teacher's)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def cosine(start: float, end: float, step: int, steps: int) -> float:
    """The authors' cosine schedule from ``start`` at step 0 towards ``end``."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / max(1, steps)))


def teacher_temperature(step: int, steps: int) -> float:
    warm = max(1, round(steps * TEMP_WARMUP))
    return WARMUP_TEACHER_TEMP + (TEACHER_TEMP - WARMUP_TEACHER_TEMP) * min(step, warm - 1) / max(1, warm - 1)


class DINOTrainer:
    """Student and EMA teacher on ``recipe.arch`` from scratch (mimetic initialisation, as shapes-vit), no labels."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int, steps: int):
        self.recipe, self.seed, self.steps, self.step = recipe, seed, steps, 0
        backbone = create_model(recipe.arch, **recipe.config)
        mimetic_init(backbone)
        self.net = DINONet(backbone)
        self.teacher = copy.deepcopy(self.net).requires_grad_(False).train()   # batch statistics, as the authors'
        self.center = torch.zeros(1, OUT_DIM)
        self.model = wrap(backbone, mean=MEAN, std=STD, class_names=CLASS_NAMES)
        self.draw = lambda n, seed: shapes(n=n, seed=seed)
        self.meta: dict = {}

    def param_groups(self, lr: float) -> list[dict]:
        """No weight decay on biases and norms (the authors' get_params_groups)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim > 1]},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]

    def loss(self, data) -> torch.Tensor:
        if self.step:
            ema_update(self.teacher, self.net, cosine(MOMENTUM, 1.0, self.step - 1, self.steps))
        g = torch.Generator().manual_seed(_TRAIN_SEED_STRIDE * (self.seed + 1) + self.step)
        globals_, locals_ = multi_crop(data.images, GLOBAL_SIZE, LOCAL_SIZE, LOCAL_CROPS, g)
        norm = self.model.normalize
        with torch.no_grad():
            teacher_out = self.teacher([norm(v) for v in globals_])
        student_out = self.net([norm(v) for v in globals_ + locals_], freeze_last=self.step < FREEZE_LAST * self.steps)
        loss = dino_loss(student_out, teacher_targets(teacher_out, self.center,
                                                      teacher_temperature(self.step, self.steps)), 2 + LOCAL_CROPS)
        self.center = update_center(self.center, teacher_out)
        self.step += 1
        return loss

    def score(self, test_seed: int) -> dict:
        """Apply the last EMA step, keep the teacher's backbone as ``net`` with a linear probe as its head, and score
        the k-NN and linear probes on fresh images."""
        ema_update(self.teacher, self.net, cosine(MOMENTUM, 1.0, self.step - 1, self.steps))
        backbone = self.teacher.backbone.eval()
        self.net, self.model = backbone, wrap(backbone, mean=MEAN, std=STD, class_names=CLASS_NAMES)
        probe_seed = _TRAIN_SEED_STRIDE * (self.seed + 1) + self.steps     # labelled images the run never drew
        train = shapes(n=PROBE_IMAGES, seed=probe_seed)
        train_features = class_features(self.model, train.images)
        backbone.head = linear_probe(train_features, train.labels, len(CLASS_NAMES))
        test = shapes(n=TEST_IMAGES, seed=test_seed)
        knn = knn_predict(train_features, train.labels, class_features(self.model, test.images), len(CLASS_NAMES))
        self.meta = {"probe_seed": probe_seed, "probe_images": PROBE_IMAGES, "out_dim": OUT_DIM,
                     "local_crops": LOCAL_CROPS}
        linear = score_shapes(self.model, "single", test_seed)["accuracy"]    # the loaded classifier's accuracy
        return {"accuracy": linear, "linear_accuracy": linear,
                "knn_accuracy": round((knn == test.labels).float().mean().item(), 4)}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return dino_card(name, recipe, meta)


@torch.no_grad()
def class_features(model, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """The class token after the final norm, (n, D), for images in [0, 1]."""
    with evaluating(model):
        return torch.cat([model.net.forward_features(model.normalize(images[i:i + batch_size].to(model.device)))[:, 0]
                          for i in range(0, len(images), batch_size)]).cpu()


@torch.no_grad()
def knn_predict(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, classes: int, k: int = KNN_K,
                temperature: float = KNN_T) -> torch.Tensor:
    """The authors' weighted k-NN (eval_knn.py): cosine similarities to the k nearest training features, votes
    weighted by exp(similarity / T), the class with the most weight."""
    sim = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    top, index = sim.topk(k, dim=1)
    votes = torch.zeros(len(test), classes).scatter_add_(1, labels[index], (top / temperature).exp())
    return votes.argmax(1)


def linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int = 300,
                 lr: float = 1e-2, weight_decay: float = 1e-4) -> nn.Linear:
    """A linear classifier on frozen features: full-batch AdamW on cross-entropy (seeded initialisation)."""
    torch.manual_seed(0)
    head = nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.requires_grad_(False)


def _temperatures() -> str:
    if WARMUP_TEACHER_TEMP == TEACHER_TEMP:
        return f"{TEACHER_TEMP:g}"
    return f"{WARMUP_TEACHER_TEMP:g} -> {TEACHER_TEMP:g} over {TEMP_WARMUP:.0%} of the steps"


def dino_card(name: str, recipe: Recipe, meta: dict) -> str:
    """The classifier card with DINO's training and the probes in place of supervised training."""
    m = meta["metrics"]
    card = model_card(name, recipe, meta)
    head, _, rest = card.partition("## Task and data\n\n")
    _, _, rest = rest.partition("## Intended use and limits")
    return head + f"""## Task and data

Self-supervised: the backbone **never saw a label**. It is the teacher of a DINO run (Caron et al., ICCV 2021;
`vitx.training.dino`): data `vitx.data.shapes(variant="single")`, a fresh batch of {meta['batch_size']} images at every
step (step k draws data seed 1,000,000 x (seed + 1) + k), each seen as 2 global views of {GLOBAL_SIZE}x{GLOBAL_SIZE}
(crop area {GLOBAL_SCALE[0]:g}-{GLOBAL_SCALE[1]:g}) and {LOCAL_CROPS} local views of {LOCAL_SIZE}x{LOCAL_SIZE} (area
{LOCAL_SCALE[0]:g}-{LOCAL_SCALE[1]:g}; the position embeddings interpolated to the 4 x 4 grid), flipped, colour-jittered,
grayscaled, the second global view solarised.

## Training

- Command: `{meta['command']}`
- Seed: {meta['seed']}; steps: {meta['steps']} at batch size {meta['batch_size']}
- Loss: cross-entropy between the teacher's centred, sharpened softmax over {OUT_DIM} outputs (projection head
  {HIDDEN}-{HIDDEN}-{BOTTLENECK}, L2-normalised, weight-normalised last layer) and the student's, over every pair of
  different views; teacher temperature {_temperatures()}, student {STUDENT_TEMP:g}; centre momentum {CENTER_MOMENTUM:g}; teacher EMA momentum {MOMENTUM:g} -> 1 (cosine)
- Initialisation: mimetic, as `shapes-vit`
- Optimiser: AdamW, learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g} (none on biases and norms),
  gradient norm clipped at {recipe.clip:g}; linear warm-up over {recipe.warmup:.0%} of the steps, then cosine decay
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}

## Results

The checkpoint is the teacher's backbone; its `head` is a linear probe fitted afterwards on the frozen class-token
features of {meta['probe_images']:,} labelled images (data seed {meta['probe_seed']}), so it loads as a classifier.
On {TEST_IMAGES:,} fresh images (data seed {meta['test_seed']}): k-NN probe ({KNN_K} neighbours, weighted, T {KNN_T:g})
accuracy **{m['knn_accuracy']:.3f}**, linear probe accuracy **{m['linear_accuracy']:.3f}**.

## Intended use and limits""" + rest
