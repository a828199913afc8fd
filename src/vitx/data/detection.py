"""Detection ground truth of the multi-object shapes images: a class and a box per object, read off its pixel-exact
mask, and the same in COCO's form so that COCO's tools can score a detector on it.

Boxes are (x0, y0, x1, y1) in pixels, the edges of the mask's outermost pixels: x0 the left edge of its leftmost
pixel column, x1 the right edge of its rightmost (so x1 - x0 is the mask's width in pixels).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import VitxError
from .shapes import ShapesData


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """The box (x0, y0, x1, y1) of a boolean mask (H, W), as float pixel edges."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return torch.stack([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()


def object_boxes(data: ShapesData) -> list[dict[str, torch.Tensor]]:
    """Per image of a "multi" shapes dataset: {"labels": (k,) class indices, "boxes": (k, 4) pixel boxes, "masks":
    (k, H, W) bool}, its objects in class order."""
    if data.variant != "multi":
        raise VitxError(f"detection ground truth is for the 'multi' shapes variant, got {data.variant!r}")
    found = []
    for labels, masks in zip(data.labels, data.masks):
        present = labels.nonzero().flatten()
        found.append({"labels": present, "boxes": torch.stack([mask_box(masks[c]) for c in present]),
                      "masks": masks[present]})
    return found


def coco_ground_truth(data: ShapesData) -> dict:
    """The dataset in COCO's annotation form: images (id = index), annotations (bbox [x, y, w, h] in pixels, the
    mask's area and run-length encoding, iscrowd 0) and categories (id = class index + 1)."""
    from pycocotools import mask as rle

    size = data.images.shape[-1]
    images = [{"id": i, "width": size, "height": size} for i in range(len(data))]
    annotations = []
    for i, objects in enumerate(object_boxes(data)):
        for label, box, mask in zip(objects["labels"].tolist(), objects["boxes"].tolist(), objects["masks"]):
            encoded = rle.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            encoded["counts"] = encoded["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": float(mask.sum()), "segmentation": encoded, "iscrowd": 0})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(data.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
