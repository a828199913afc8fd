"""The ``shapes-detr`` recipe of ``vitx train``: DETR's set-prediction loss (Carion et al., ECCV 2020) on the
multi-object shapes images, the encoder started from ``shapes-vit-multi``; scored by COCO's AP on fresh images.

Per image, the Hungarian matching σ (scipy's ``linear_sum_assignment``) pairs each object j with the query of least
cost C(q, j) = -λ_c p_q(c_j) + λ_L1 ‖b_q - b_j‖₁ - λ_giou GIoU(b_q, b_j); the loss is then
L = CE(logits, matched classes, every unmatched query "no object", weighted ``NO_OBJECT_WEIGHT``)
    + λ_L1 ‖b_σ(j) - b_j‖₁ + λ_giou (1 - GIoU(b_σ(j), b_j)), the box terms averaged over the objects,
summed over the outputs of every decoder layer (DETR's auxiliary losses). λ_c = 1, λ_L1 = 5, λ_giou = 2 (DETR's).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from ..data import CLASS_NAMES, shapes
from ..data.detection import coco_ground_truth, object_boxes
from ..metrics.detection import coco_ap, coco_detections
from ..models import create_model
from ..objects import pixel_boxes
from .device import OnDevice
from .recipes import TEST_IMAGES, Recipe, architecture_facts
from .vqa import image_side_from

CLASS_COST, L1_COST, GIOU_COST = 1.0, 5.0, 2.0
NO_OBJECT_WEIGHT = 0.1
AP50_BAR = 0.9     # issue 14's detection quality on fresh images


def normalised_targets(data, size: int, device) -> list[dict[str, torch.Tensor]]:
    """Per image: its classes and boxes as (cx, cy, w, h) fractions of the image, on ``device``."""
    return [{"labels": t["labels"].to(device),
             "boxes": box_convert(t["boxes"] / size, "xyxy", "cxcywh").to(device)} for t in object_boxes(data)]


@torch.no_grad()
def match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image (queries, objects): the Hungarian matching of least total cost C (the module's formula)."""
    probs = logits.softmax(-1)
    found = []
    for p, b, t in zip(probs, boxes, targets):
        cost = (-CLASS_COST * p[:, t["labels"]] + L1_COST * torch.cdist(b, t["boxes"], p=1)
                - GIOU_COST * generalized_box_iou(box_convert(b, "cxcywh", "xyxy"), box_convert(t["boxes"], "cxcywh", "xyxy")))
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        found.append((torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)))
    return found


def set_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """DETR's loss for one decoder layer's outputs (B, Q, C + 1) and (B, Q, 4) against ``targets``."""
    matched = match(logits, boxes, targets)
    classes = torch.full(logits.shape[:2], logits.shape[-1] - 1, dtype=torch.long, device=logits.device)
    for i, (queries, objects) in enumerate(matched):
        classes[i, queries] = targets[i]["labels"][objects]
    weight = torch.ones(logits.shape[-1], device=logits.device)
    weight[-1] = NO_OBJECT_WEIGHT
    loss = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), weight)
    predicted = torch.cat([boxes[i, q] for i, (q, _) in enumerate(matched)])
    true = torch.cat([targets[i]["boxes"][o] for i, (_, o) in enumerate(matched)])
    count = max(len(true), 1)
    giou = torch.diag(generalized_box_iou(box_convert(predicted, "cxcywh", "xyxy"), box_convert(true, "cxcywh", "xyxy")))
    return loss + L1_COST * F.l1_loss(predicted, true, reduction="sum") / count + GIOU_COST * (1 - giou).sum() / count


def detections(logits: torch.Tensor, boxes: torch.Tensor, size: int):
    """Per query: score (the highest probability of an object class), class index and pixel box (x0, y0, x1, y1)."""
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    return scores, labels, pixel_boxes(boxes, (size, size))


class Detector(OnDevice):
    """A DETR-like detector trained with the set-prediction loss, its encoder started from ``recipe.start``."""

    def __init__(self, recipe: Recipe, out_dir: Path):
        super().__init__(create_model(recipe.arch))
        self.loaded = image_side_from(self.net, out_dir / f"{recipe.start}.safetensors")
        self.meta = {"kind": "detr", "class_names": CLASS_NAMES, "multi_label": False, "dataset": "shapes/multi 64px"}

    def loss(self, data) -> torch.Tensor:
        size = data.images.shape[-1]
        logits, boxes = self.net(self.normalized(data.images), every_layer=True)
        targets = normalised_targets(data, size, logits.device)
        return sum(set_loss(l, b, targets) for l, b in zip(logits, boxes))

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """COCO AP of every query's detection on TEST_IMAGES fresh multi images of data seed ``test_seed``."""
        n = TEST_IMAGES
        data = shapes(n=n, seed=test_seed, variant="multi")
        size = data.images.shape[-1]
        outputs = [self.net(self.normalized(data.images[i:i + 250])) for i in range(0, n, 250)]
        found = detections(torch.cat([o[0] for o in outputs]).cpu(), torch.cat([o[1] for o in outputs]).cpu(), size)
        return coco_ap(coco_ground_truth(data), coco_detections(*found))

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return detector_card(name, recipe, meta, self.loaded)


def detector_card(name: str, recipe: Recipe, meta: dict, loaded: list[str]) -> str:
    """The Markdown model card of a detector recipe's checkpoint."""
    cfg, grid, params = architecture_facts(recipe.arch)
    metrics = meta["metrics"]
    verdict = "meets" if metrics["ap50"] >= AP50_BAR else "does **not** meet"
    return f"""# {name}

A small DETR-like object detector trained on vitx's multi-object shapes images, whose generator knows every
object's pixel mask, so that a map explaining a detection can be scored as a weak segmentation of that object.
Load it with `vitx.load_model("{name}")`.

## Architecture

`{recipe.arch}` (vitx.models.detr; Carion et al., ECCV 2020): {cfg.image_size}x{cfg.image_size} input, {cfg.patch_size}x{cfg.patch_size} patches
({grid * grid} image tokens) embedded by `vitx_shapes`' convolutional stem, {cfg.encoder_layers} pre-norm encoder blocks; {cfg.decoder_layers} pre-norm
decoder layers (self-attention of the queries, cross-attention over the image tokens, MLP) on {cfg.queries} learned object
queries; {cfg.embed_dim} dimensions, {cfg.num_heads} heads, MLP ratio {cfg.mlp_ratio:g}. Per query: class logits over the {len(cfg.classes)} classes and "no
object" (Linear), and a box (cx, cy, w, h) as fractions of the image (3-layer ReLU MLP, sigmoid). {params:,} parameters.
Input normalisation: mean {list(meta['mean'])}, std {list(meta['std'])} (as `{recipe.start}`).

## Task and data

`vitx.data.shapes(variant="multi")`: 64x64 images of 2 or 3 objects of different classes ({', '.join(CLASS_NAMES)})
on a textured, cluttered background. Boxes are read off the pixel-exact masks (`vitx.data.detection`). A fresh batch
of {meta['batch_size']} images at every step (step k draws data seed 1,000,000 x (seed + 1) + k); no augmentation.

## Training

- Command: `{meta['command']}`
- Seed: {meta['seed']} (`torch.manual_seed`; the data seeds follow from it)
- Steps: {meta['steps']} at batch size {meta['batch_size']} ({meta['steps'] * meta['batch_size']:,} images)
- Loss: DETR's set-prediction loss, summed over the outputs of every decoder layer (auxiliary losses): Hungarian
  matching (scipy's `linear_sum_assignment`) on the cost -p(class) + 5 L1 - 2 GIoU; then cross-entropy (the "no object"
  class weighted {NO_OBJECT_WEIGHT}) + 5 L1 + 2 (1 - GIoU) on the matched boxes (torchvision's box ops)
- Start: the image side of `{recipe.start}` ({len(loaded)} tensors: its stem, its patch position embeddings and its
  blocks as the encoder); the decoder, queries and heads as the architecture initialises them
- Optimiser: AdamW, learning rate {recipe.lr:g} for every weight, weight decay {recipe.weight_decay:g}, gradient norm clipped at
  {recipe.clip:g}; linear warm-up over {recipe.warmup:.0%} of the steps, then cosine decay to zero
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}

Why this recipe: DETR trains for 500 epochs on COCO because its queries must learn where to look from nothing. Here
the encoder starts from a classifier of the same images (so the image tokens already tell the shapes apart), the
images hold at most 3 objects (8 queries are plenty), the pre-norm blocks and the auxiliary losses of every decoder
layer keep the early steps stable at a learning rate five times DETR's, and the whole run fits in about an hour on one
CPU core.

## Results

On {TEST_IMAGES:,} fresh multi images (data seed {meta['test_seed']}), every query a detection with its best object
class's probability as its score, scored by pycocotools' COCOeval (bounding boxes, up to 100 detections per image):

| AP (IoU 0.5:0.95) | AP50 | AP75 |
|---:|---:|---:|
| {metrics['ap']:.3f} | {metrics['ap50']:.3f} | {metrics['ap75']:.3f} |

The model {verdict} issue 14's bar of AP50 >= {AP50_BAR}.

## Intended use and limits

A test subject for explaining detections (Chefer et al.'s encoder-decoder rules and their baselines) and for scoring
their maps as weak segmentations. It knows only this synthetic world: 64x64 images of 2-3 solid shapes of 8 classes.
"""
