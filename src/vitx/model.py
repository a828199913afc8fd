"""The model handle every vitx function takes: the user's network (wrapped, not copied), its adapter,
its configuration and its preprocessing."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from .adapters import Adapter, adapter_for
from .errors import VitxError
from .images import IMAGENET_MEAN, IMAGENET_STD, load_images
from .layout import TokenLayout
from .text import Text



@dataclass(frozen=True)
class ModelConfig:
    """What vitx knows of a model: its token layout, what its head reads, and the preprocessing its weights
    expect (taken from the model where its framework records it, else ImageNet's mean and std)."""
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    num_classes: int
    num_prefix_tokens: int
    cls_index: int | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    class_names: tuple[str, ...] = ()
    multi_label: bool = False
    dynamic_size: bool = False
    kind: str = "vit"
    name: str = ""
    levels: tuple[int, ...] = ()     # nest: transformer layers per level (the tap's blocks, level by level); hvt: blocks
                                     # per stage
    pooling: str = "cls"             # what the head reads: "cls" (the class token), "avg", "max", "map"...
    text_length: int = 0             # bi-modal: the most text tokens (special ones included) per question; 0: none
    input: str = "pixels"            # "regions": detector regions (B, R, F) from :meth:`Model.regions`, maps per region

    def __post_init__(self):
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                raise VitxError(f"{name} must be 3 finite numbers, one per RGB channel; got {value!r}")
        if not all(v > 0 for v in self.std):
            raise VitxError(f"std must be positive in every channel (the input is divided by it); got {self.std!r}")
        if self.input not in ("pixels", "regions"):
            raise VitxError(f"input must be 'pixels' or 'regions', got {self.input!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise VitxError(f"class_names has {len(self.class_names)} names for a model of {self.num_classes} "
                            "classes")

    @property
    def input_range(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per channel, the model inputs of pixel values 0 and 1: ((0 − mean) / std, (1 − mean) / std)."""
        return (tuple(-m / s for m, s in zip(self.mean, self.std)),
                tuple((1 - m) / s for m, s in zip(self.mean, self.std)))


class Model(nn.Module):
    """``model(x)`` gives logits; ``model.preprocess(images)`` gives the input it expects."""

    def __init__(self, net: nn.Module, adapter: Adapter, config: ModelConfig):
        super().__init__()
        self.net = net
        self.adapter = adapter
        self.config = config

    def forward(self, x: torch.Tensor, text: Text | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for images x; a bi-modal model also takes its encoded ``text`` (:meth:`encode_text`) and, to delete
        image tokens, ``keep`` (B, k) the indices of the patches it keeps."""
        if not self.config.text_length:
            return self.adapter.forward(x)
        if not self.image_text:
            return self.adapter.forward(x, text, keep)
        if keep is not None:
            raise VitxError("an image-text model keeps all image tokens: delete them through the tap's key_mask")
        return self.adapter.forward(x, text)

    def detect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A detector's class logits (B, queries, classes + 1), "no object" last, and boxes (B, queries, 4) as (cx, cy,
        w, h) fractions of the image."""
        return self.adapter.detect(x)

    @property
    def detector(self) -> bool:
        return self.config.kind == "detr"

    @property
    def bimodal(self) -> bool:
        return self.config.text_length > 0

    @property
    def image_text(self) -> bool:
        """Two towers scoring (image, prompt) pairs by similarity (CLIP and kin, :mod:`vitx.prompts`)."""
        return self.config.kind == "clip"

    def encode_text(self, questions, unknown: str = "warn") -> Text:
        """Questions (one string, or one per image) -> the model's :class:`~vitx.text.Text`. Words outside the
        vocabulary become the unknown token with a warning naming them (``unknown="error"``: refused)."""
        if not self.bimodal:
            raise VitxError(f"this model reads images only ({self.config.kind!r}); text is for bi-modal models")
        if isinstance(questions, str):
            questions = [questions]
        return self.adapter.encode_text(list(questions), unknown=unknown)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def class_name(self, index: int) -> str:
        names = self.config.class_names
        return names[index] if index < len(names) else str(index)

    def preprocess(self, images, resize: str = "stretch", frames: bool = False):
        """Images -> the model input, normalised (B, 3, H, W) at the model's image size; with ``frames=True``,
        also a :class:`~vitx.images.Frame` per image (its original size, where it went, its file stem) for
        ``Explanation.original_map``.

        images: paths, PIL images, uint8/uint16 arrays or tensors, float arrays or tensors; one, a list, or a
        (B, 3, H, W) batch. Integer pixels are scaled to [0, 1] (a 32-bit "I" image by 255, or 65535 above 255);
        float pixels (and float "F" images) are read as they are, in [0, 1]. A float image with NaN or infinite
        values, or with values beyond [0, 1] by more than 0.1 (0-255 levels, or input already normalised), is
        refused with a one-line ``VitxError`` naming the image: divide by 255 yourself; nothing is rescaled by
        guess. Values within the 0.1 tolerance are clamped.
        resize: "stretch" (to the model's size, the aspect ratio lost; the default), "crop" (the short side
        fitted, the centre cut out) or "pad" (the long side fitted, the rest filled with the model's mean
        colour, 0 after normalisation).
        """
        if self.config.input == "regions":
            raise VitxError("this model reads detector regions, not images: build its input with "
                            "model.regions(features, boxes)")
        pixels, placed = load_images(images, self.config.image_size, resize, background=self.config.mean)
        x = self.normalize(pixels)
        return (x, placed) if frames else x

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.config.std, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.config.std, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def regions(self, features: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """A region model's input (B, R, width) from its detector's region features (B, R, F) and, for a model that
        reads boxes (LXMERT), the regions' boxes (B, R, 4): x1, y1, x2, y2 normalised to [0, 1]."""
        if self.config.input != "regions":
            raise VitxError("this model reads images (B, 3, H, W), not regions: use model.preprocess(images)")
        return self.adapter.regions(features, boxes)

    def layout(self, x: torch.Tensor | None = None) -> TokenLayout:
        """The token layout for input ``x`` (B, 3, H, W), by default an image of the configured ``image_size``; a
        :class:`VitxError` if the model cannot take it. A region model's input (B, R, width) lies on a grid (1, R)
        with no prefix and no class token."""
        if x is None and self.config.input == "pixels":
            x = torch.zeros(1, 3, *self.config.image_size)
        if self.config.input == "regions":
            return self.adapter.region_layout(x)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise VitxError(f"model input must be a (B, 3, H, W) tensor, got {shape}")
        height, width = x.shape[-2:]
        cfg = self.config
        if not cfg.dynamic_size and (height, width) != cfg.image_size:
            raise VitxError(f"this model takes {cfg.image_size[0]}x{cfg.image_size[1]} images, got {height}x{width}; "
                            "use model.preprocess(images) to resize")
        return TokenLayout.for_image(height, width, cfg.patch_size, cfg.num_prefix_tokens, cfg.cls_index)


def wrap(net: nn.Module, tokenizer=None, **config) -> Model:
    """Wrap a network in a :class:`Model`, reading its layout and preprocessing from its adapter; ``config``
    overrides. ``tokenizer``: the Hugging Face tokenizer of a region VQA model's questions (VisualBERT, LXMERT)."""
    _check_names(config)
    adapter = adapter_for(net)
    if tokenizer is not None:
        adapter.use_tokenizer(tokenizer)
    d = adapter.describe()
    described = ModelConfig(image_size=d.image_size, patch_size=d.patch_size, num_classes=d.num_classes,
                            num_prefix_tokens=d.num_prefix_tokens, cls_index=d.cls_index, dynamic_size=d.dynamic_size,
                            kind=d.kind, levels=d.levels, pooling=d.pooling, text_length=d.text_length, input=d.input,
                            mean=d.mean or IMAGENET_MEAN,
                            std=d.std or IMAGENET_STD,
                            class_names=d.class_names or tuple(f"class {i}" for i in range(d.num_classes)))
    return Model(net, adapter, configured(described, config))


def configured(config: ModelConfig, settings: dict) -> ModelConfig:
    """``config`` with a user's ``settings`` (field names of ModelConfig), checked."""
    _check_names(settings)
    return replace(config, **{k: _setting(k, v) for k, v in settings.items()})


def _check_names(settings: dict) -> None:
    names = [f.name for f in fields(ModelConfig)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise VitxError(f"unknown model setting {unknown[0]!r}; settings: {', '.join(names)}")


def _setting(name: str, value):
    """A user's setting as ModelConfig holds it: mean and std as float tuples, lists as tuples."""
    if name in ("mean", "std"):
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise VitxError(f"{name} must be 3 numbers, one per RGB channel; got {value!r}") from None
    return tuple(value) if isinstance(value, list) else value


def as_model(model) -> Model:
    if isinstance(model, Model):
        return model
    if isinstance(model, nn.Module):
        return wrap(model)
    from .loading import load_model
    return load_model(model)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Put every submodule in eval mode for the block, then restore each one's own mode. Only the modules
    in training mode are touched: ``eval()`` and resetting every module's flag cost ~12% of a one-image
    forward of the shapes ViT."""
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield module
    finally:
        for m in training:
            m.training = True
