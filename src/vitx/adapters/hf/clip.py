"""The vision towers of Hugging Face CLIP and SigLIP, bare (``CLIPVisionModel``, ``SiglipVisionModel``) or under
an image classifier. CLIP's tower has a class token and a LayerNorm before its layers; its classifier reads the
mean of the patch tokens (the class token left out), the bare tower's pooled output the class token. SigLIP's
tower has no class token; its classifier reads the mean of all tokens, the bare tower's pooled output its
attention-pooling head ("map": a MultiheadAttention of its own after the layers, not one of the tap's blocks).
"""
from __future__ import annotations

from .common import HFAdapter


class HFClipAdapter(HFAdapter):
    backbone = "vision_model"
    towers = {"CLIPVisionModel": "CLIPForImageClassification"}

    def encoder_layers(self):
        return self.model.encoder.layers

    def attentions(self):
        return [layer.self_attn for layer in self.layers]

    def output_projection(self, attention):
        return attention.out_proj

    def pooling(self) -> str:
        return "cls" if self.tower else "avg"

    def pixel_layer(self):
        return self.model.embeddings.patch_embedding

    def residual_branches(self, layer):
        return layer.layer_norm1, layer.layer_norm2


class HFSiglipAdapter(HFClipAdapter):
    towers = {"SiglipVisionModel": "SiglipForImageClassification"}

    def prefix(self):
        return 0, None

    def pooling(self) -> str:
        if not self.tower:
            return "avg"
        return "map" if self.vision.vision_use_head else "none"
