"""Hugging Face BEiT and data2vec-vision classifiers: relative position bias (per layer, or shared by all),
layer scale (``lambda_1``/``lambda_2``, parameters multiplied in the layer's forward), and a head on the mean
of the patch tokens (``use_mean_pooling``, the default) or on the class token.

BEiT's attention (transformers >= 5) is the q/k/v/o kind, the bias arriving as its attention mask.
data2vec-vision keeps the older layout: ``layer.attention.attention`` projects ``query``/``key``/``value``, adds
its own bias and the shared one, and ``layer.attention.output.dense`` projects back; its class (eager or sdpa)
was chosen when the model was built.
"""
from __future__ import annotations

import torch

from ..base import Attend
from .common import HFAdapter


class HFBeitAdapter(HFAdapter):
    backbone = "beit"

    def encoder_layers(self):
        return self.model.layers

    def pooling(self) -> str:
        return "avg" if self.net.config.use_mean_pooling else "cls"

    def residual_branches(self, layer):
        return layer.layernorm_before, layer.layernorm_after


class HFData2VecVisionAdapter(HFBeitAdapter):
    backbone = "data2vec_vision"
    projections = ("query", "key", "value")

    def encoder_layers(self):
        return self.model.encoder.layer

    def attentions(self):
        return [layer.attention.attention for layer in self.layers]

    def output_projection(self, attention):
        return next(layer.attention.output.dense for layer in self.layers if layer.attention.attention is attention)

    def attention_forward(self, module, attend: Attend):
        patch = self.vision.patch_size

        def forward(hidden_states: torch.Tensor, output_attentions: bool = False, relative_position_bias=None,
                    interpolate_pos_encoding: bool = False, resolution=None):
            shape = (*hidden_states.shape[:-1], -1, module.attention_head_size)
            q, k, v = (proj(hidden_states).view(shape).transpose(1, 2)
                       for proj in (module.query, module.key, module.value))
            bias = None
            if module.has_relative_position_bias:
                window = (resolution[0] // patch, resolution[1] // patch)
                bias = module.relative_position_bias(window, interpolate_pos_encoding, dim_size=hidden_states.shape[1])
            if relative_position_bias is not None:
                bias = relative_position_bias if bias is None else bias + relative_position_bias
            dropout = module.dropout.p if module.training else 0.0
            out = attend(q, k, v, module.attention_head_size ** -0.5, dropout, bias)
            out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
            return (out, None) if output_attentions else (out,)
        return forward
