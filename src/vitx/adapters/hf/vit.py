"""Hugging Face ``ViTForImageClassification`` and the DeiT classifiers (with a distillation token)."""
from __future__ import annotations

from .common import HFAdapter


class HFViTAdapter(HFAdapter):
    def __init__(self, net):
        self.backbone = "vit" if hasattr(net, "vit") else "deit"
        super().__init__(net)

    def encoder_layers(self):
        # recent transformers keep the layers on the backbone, earlier versions in backbone.encoder.layer
        return getattr(self.model, "layers", None) or self.model.encoder.layer

    def prefix(self):
        return (2 if hasattr(self.model.embeddings, "distillation_token") else 1), 0

    def pooling(self) -> str:
        return "cls"

    def residual_branches(self, layer):
        return layer.layernorm_before, layer.layernorm_after
