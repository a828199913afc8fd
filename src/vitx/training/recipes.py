"""``vitx train``: the recipes behind the zoo's checkpoints, reproducible from a seed.

Data is drawn fresh at every step from :func:`vitx.data.shapes` (:func:`vitx.data.shapes_vqa` for the VQA
recipes): step ``k`` of a run with seed ``s`` uses the images of data seed ``1_000_000 * (s + 1) + k``, so
training never sees a data seed below 1,000,000 and every smaller seed (such as the test seed ``10_000 + s``)
holds fresh images. The step batches can be drawn ahead by worker processes; the data are the same either way.
A recipe with a ``pool`` (the VQA recipes, whose generator is ten times slower) draws that many items once instead,
chunk ``j`` of 1,000 from data seed ``1_000_000 * (s + 1) + j``, and samples its batches from them in shuffled
epochs (:mod:`vitx.training.vqa`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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
                              # "generator" (a GAN generator; ``arch`` "nest" or "conv"), "vqa" (on shapes_vqa), "dino"
    batch_size: int = 128
    coalitions: int = 0    # shapley-explainer: coalitions per image and step, in complementary pairs
    betas: tuple[float, float] = (0.9, 0.999)  # Adam(W)'s
    fd_every: int = 0      # generator: steps between Fréchet distances recorded
    config: dict = field(default_factory=dict)  # classifier: overrides of the architecture's configuration
    pool: int = 0          # vqa: items drawn once and sampled in shuffled epochs (0: a fresh batch every step)
    keep_ratio: float = 1.0  # a pruned twin ("dynamicvit", "evit"): ρ, the share of patch tokens kept per stage
    flops: float = 1.0     # xpruner: the share of ``start``'s FLOPs the pruned twin may use, in (0, 1]
    mask_steps: int = 0    # xpruner: steps of class-mask learning on the frozen ``start``, before the loop
    explanation: float = 0.0  # concepts: λ, the weight of the explanation loss

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
    "shapes-vit-dynamicvit": Recipe("vitx_shapes", "single", steps=500, lr=1e-3, start="shapes-vit",
                                    kind="dynamicvit", batch_size=64, keep_ratio=0.7),
    "shapes-vit-evit": Recipe("vitx_shapes", "single", steps=500, lr=1e-4, start="shapes-vit", kind="evit",
                              batch_size=64, keep_ratio=0.7),
    "shapes-clip": Recipe("clip_shapes", "captions", steps=4000, lr=5e-4, start="shapes-vit", kind="clip",
                          batch_size=128),
    "shapes-vit-iared2": Recipe("vitx_shapes", "single", steps=1200, lr=1e-3, start="shapes-vit", kind="iared2",
                                batch_size=64),
    "shapes-vit-diffmask": Recipe("vitx_shapes", "single", steps=1500, lr=1e-3, weight_decay=0.0, warmup=0.2,
                                  start="shapes-vit", kind="diffmask", batch_size=64),
    "shapes-vit-slim": Recipe("vitx_shapes", "single", steps=400, lr=2e-4, start="shapes-vit", kind="slimming",
                              batch_size=64),
    "shapes-vit-xpruner": Recipe("vitx_shapes", "single", steps=700, lr=3e-4, start="shapes-vit", kind="xpruner",
                                 batch_size=64, flops=0.67, mask_steps=400),
    "shapes-hvt": Recipe("hvt_shapes", "single", steps=6000, lr=1e-3),
    "shapes-vit-net": Recipe("vitnet_shapes", "single", steps=560, lr=1e-3, start="shapes-vit", kind="vitnet",
                             batch_size=64),
    "shapes-vit-exvit": Recipe("exvit_shapes", "single", steps=350, lr=3e-4, start="shapes-vit", kind="exvit",
                               batch_size=64),
    "shapes-vit-dino": Recipe("vitx_shapes", "single", steps=1500, lr=1e-3, weight_decay=0.04, warmup=0.1, clip=3.0,
                              kind="dino", batch_size=32),
    "shapes-vit-concepts": Recipe("vitx_shapes_concepts", "single", steps=400, lr=2e-4, start="shapes-vit",
                                  kind="concepts", batch_size=64, explanation=5.0),
}



def architecture_facts(arch: str) -> tuple[object, int, int]:
    """For a model card: the architecture's configuration, its patch grid's side and its parameter count."""
    from ..models import ARCHITECTURES, create_model
    cfg = ARCHITECTURES[arch]
    return cfg, cfg.image_size // cfg.patch_size, sum(p.numel() for p in create_model(arch).parameters())
