"""Adapter for Hugging Face ``ViTForImageClassification`` and the DeiT classifiers (transformers >= 5).

transformers' ``ViTAttention.forward`` projects q, k, v with ``q_proj``/``k_proj``/``v_proj``, calls the
configured attention implementation (eager, sdpa, flash...) and projects back with ``o_proj``. The
replacement keeps the projections and routes the product through the tap, whichever implementation
the model was loaded with.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import state_dict_error
from ..errors import VitxError
from .base import Adapter, Attend, Description, pair, project_values
from .hub import cached_file, offline_reason

PROCESSOR_FILE = "preprocessor_config.json"


class HFViTAdapter(Adapter):
    framework = "hf"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        self.backbone = getattr(net, "vit", None) or getattr(net, "deit", None)
        # recent transformers keep the layers on the backbone, earlier versions in backbone.encoder.layer
        encoder = getattr(self.backbone, "encoder", None)
        self.layers = getattr(self.backbone, "layers", None) or getattr(encoder, "layer", None)
        if self.layers is None:
            raise VitxError(f"Hugging Face model {type(net).__name__} is not a ViT or DeiT classifier "
                            "the tap can inspect")
        for i, layer in enumerate(self.layers):
            if not all(hasattr(layer.attention, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
                raise VitxError(f"Hugging Face model {type(net).__name__}: layer {i} attention has no q/k/v/o "
                                "projections (transformers >= 5 is required)")

    def describe(self) -> Description:
        cfg = self.net.config
        prefix = 2 if hasattr(self.backbone.embeddings, "distillation_token") else 1
        id2label = cfg.id2label or {}
        names = tuple(str(id2label.get(i, f"class {i}")) for i in range(cfg.num_labels))
        return Description(pair(cfg.image_size), pair(cfg.patch_size), prefix, 0, int(cfg.num_labels),
                           dynamic_size=True, pooling="cls", class_names=names, **image_processing(cfg))

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def attentions(self) -> list[nn.Module]:
        return [layer.attention for layer in self.layers]

    def attention_forward(self, module, attend: Attend):
        def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
            shape = (*hidden_states.shape[:-1], -1, module.head_dim)
            q, k, v = (proj(hidden_states).view(shape).transpose(1, 2)
                       for proj in (module.q_proj, module.k_proj, module.v_proj))
            dropout = module.attention_dropout if module.training else 0.0
            out = attend(q, k, v, module.scaling, dropout, attention_mask)
            out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
            return module.o_proj(out), None
        return forward

    def value_projection(self, module):
        return partial(project_values, module.o_proj)

    def pixel_layer(self) -> nn.Module:
        return self.backbone.embeddings.patch_embeddings.projection

    def residual_branches(self, layer) -> tuple[nn.Module, ...]:
        return layer.layernorm_before, layer.layernorm_after

    def layer_kind(self, module: nn.Module) -> str:
        if type(module).__module__ == "transformers.activations":
            return "activation"
        return super().layer_kind(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        return self.net(pixel_values=x, interpolate_pos_encoding=size != self.describe().image_size).logits


def image_processing(cfg) -> dict:
    """mean and std of the model's image processor: its preprocessor_config.json beside the weights (the
    directory the model was loaded from, or the hub cache), else the defaults of its type's image processor."""
    source = str(getattr(cfg, "_name_or_path", "") or "")
    local = Path(source).expanduser() / PROCESSOR_FILE
    path = None if not source else local if local.is_file() else cached_file(source, (PROCESSOR_FILE,))
    settings = json.loads(Path(path).read_text()) if path else {}
    if "image_mean" not in settings or "image_std" not in settings:
        settings = {**_processor_defaults(cfg.model_type), **settings}
    if settings.get("do_normalize") is False:
        return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    if "image_mean" not in settings:
        return {}
    return {"mean": tuple(settings["image_mean"]), "std": tuple(settings["image_std"])}


def _processor_defaults(model_type: str) -> dict:
    """image_mean and image_std of the image processor transformers pairs with ``model_type``; {} if none."""
    from transformers.models.auto.image_processing_auto import (IMAGE_PROCESSOR_MAPPING_NAMES,
                                                                 get_image_processor_class_from_name)
    name = next(iter((IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}).values()), None)  # {backend: class}
    processor = get_image_processor_class_from_name(name) if name else None
    if processor is None or getattr(processor, "image_mean", None) is None:
        return {}
    return {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}


def load(source: str) -> tuple[nn.Module, dict]:
    """``AutoModelForImageClassification.from_pretrained`` on a hub id or a local directory (the hub's cache
    alone where the hub cannot be reached)."""
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as err:
        raise VitxError(f"loading 'hf:{source}' needs transformers installed ({err})") from None
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise VitxError(f"'hf:{source}': no such model directory")
    reason = None if looks_local else offline_reason()
    try:
        with _quiet_loading():
            net = AutoModelForImageClassification.from_pretrained(source, local_files_only=reason is not None)
    except Exception as err:  # hub, file and format errors all end here
        if reason:
            raise VitxError(f"Hugging Face model {source!r}: {reason} and the model is not in the local cache; pass "
                            "a local directory saved with save_pretrained: load_model('hf:DIR') or vitx explain "
                            "--model hf:DIR") from None
        raise VitxError(f"could not load Hugging Face model {source!r}: {state_dict_error(err)}") from None
    return net, {"name": f"hf:{source}"}


@contextmanager
def _quiet_loading():
    """Hide transformers' weight-loading progress bar (the CLI prints one line per problem), then restore it."""
    from transformers.utils import logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
