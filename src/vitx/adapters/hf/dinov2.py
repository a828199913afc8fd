"""Hugging Face DINOv2, with or without register tokens: its classifiers read concat(class token, mean of the
patch tokens) ("cls+avg"), ``Dinov2Model`` is a vision tower; layer scale and drop-path are modules, position
embeddings are resampled to any image size. The SwiGLU feed-forward of the giant models multiplies two
projections (a gate), for which relevance rules have no rule."""
from __future__ import annotations

from .common import HFAdapter


class HFDinov2Adapter(HFAdapter):
    towers = {"Dinov2Model": "Dinov2ForImageClassification",
              "Dinov2WithRegistersModel": "Dinov2WithRegistersForImageClassification"}
    resizes = False

    def __init__(self, net):
        self.backbone = "dinov2_with_registers" if hasattr(net, "dinov2_with_registers") else "dinov2"
        super().__init__(net)
        self.gates = {id(layer.mlp.gate_proj) for layer in self.layers if hasattr(layer.mlp, "gate_proj")}

    def encoder_layers(self):
        return self.model.encoder.layer

    def prefix(self):
        return 1 + getattr(self.vision, "num_register_tokens", 0), 0

    def pooling(self) -> str:
        return "cls" if self.tower else "cls+avg"

    def residual_branches(self, layer):
        return layer.norm1, layer.norm2

    def layer_kind(self, module) -> str:
        return "SwiGLU gate" if id(module) in self.gates else super().layer_kind(module)
