"""The preprocessing a Hugging Face model's weights expect: its image processor's settings, read from the
preprocessor_config.json beside the weights, else the defaults of the image processor transformers pairs
with the model's type."""
from __future__ import annotations

import json
from pathlib import Path

from ...images import IMAGENET_MEAN, IMAGENET_STD
from ..base import pair
from ..hub import cached_file

PROCESSOR_FILE = "preprocessor_config.json"

# Model types whose published checkpoints state other settings than their image processor's defaults: DINOv2's
# (facebook/dinov2-*, with registers too) ship BitImageProcessor with ImageNet's mean and std, where
# BitImageProcessor's defaults are CLIP's; the registers variant has no image processor of its own.
IMAGENET = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
CHECKPOINT_DEFAULTS = {"dinov2": IMAGENET, "dinov2_with_registers": IMAGENET}


def image_processing(cfg) -> dict:
    """mean and std of the model's image processor, and the image size it feeds the model where its
    preprocessor_config.json says one: the file beside the weights (the directory the model was loaded from, or
    the hub cache), else the defaults of the image processor of the model's type (mean and std only)."""
    source = str(getattr(cfg, "_name_or_path", "") or "")
    local = Path(source).expanduser() / PROCESSOR_FILE
    path = None if not source else local if local.is_file() else cached_file(source, (PROCESSOR_FILE,))
    settings = json.loads(Path(path).read_text()) if path else {}
    size = _input_size(settings)
    if "image_mean" not in settings or "image_std" not in settings:
        settings = {**_processor_defaults(cfg.model_type), **settings}
    found = {"image_size": size} if size else {}
    if settings.get("do_normalize") is False:
        return {**found, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    if "image_mean" not in settings:
        return found
    return {**found, "mean": tuple(settings["image_mean"]), "std": tuple(settings["image_std"])}


def processor_facts(cfg, classes: int) -> tuple[tuple[int, int] | None, dict]:
    """The image size the processor feeds the model (None where it states none), and the Description fields
    that it and the config give: the names of ``classes`` classes (``id2label``), mean and std."""
    processing = image_processing(cfg)
    size = processing.pop("image_size", None)
    id2label = cfg.id2label or {}
    return size, {"class_names": tuple(str(id2label.get(i, f"class {i}")) for i in range(classes)), **processing}


def _input_size(settings: dict) -> tuple[int, int] | None:
    """(H, W) of the processor's output: its center crop where it crops, else the size it resizes to when that
    is a height and width (a shortest edge alone leaves the aspect ratio to the image: None)."""
    size = settings.get("crop_size") if settings.get("do_center_crop") else settings.get("size")
    if isinstance(size, dict):
        size = (size["height"], size["width"]) if {"height", "width"} <= set(size) else None
    return pair(size) if size else None


def _processor_defaults(model_type: str) -> dict:
    """image_mean and image_std for ``model_type`` (a vision sub-configuration "<type>_vision_model" takes its
    model's): the defaults of the image processor transformers pairs with it; {} if none."""
    from transformers.models.auto.image_processing_auto import (IMAGE_PROCESSOR_MAPPING_NAMES,
                                                                 get_image_processor_class_from_name)
    model_type = model_type.removesuffix("_vision_model")
    if model_type in CHECKPOINT_DEFAULTS:
        return CHECKPOINT_DEFAULTS[model_type]
    name = next(iter((IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}).values()), None)  # {backend: class}
    processor = get_image_processor_class_from_name(name) if name else None
    if processor is None or getattr(processor, "image_mean", None) is None:
        return {}
    return {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}
