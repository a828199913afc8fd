"""Hugging Face ``LxmertForQuestionAnswering``: a language and an object-relationship stream, then cross-modality
layers; the head reads the language stream's [CLS] token.

Sites in forward order: the language layers ("text" self-attention), the relationship layers ("image"), then per
cross-modality layer the co-attention text→image and image→text, and its language and vision self-attention.
Transformers runs both co-attention directions through one module (``LxmertXLayer.visual_attention``); to record
them as two sites, the adapter's forward runs each cross-modality layer's co-attention through two stand-ins of that
module (:class:`Direction`), one per direction, and puts the layer's own ``cross_att`` back when the forward ends.
"""
from __future__ import annotations

import torch
from torch import nn

from ...text import Text
from ..base import Attend, Site
from .regions import HFRegionAdapter, bert_heads


class Direction(nn.Module):
    """One direction of a cross-modality layer's co-attention: its ``LxmertAttention``, run as it is."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, context, attention_mask=None, output_attentions=False):
        return self.attention(hidden_states, context, attention_mask, output_attentions=output_attentions)


class HFLxmertAdapter(HFRegionAdapter):
    def __init__(self, net):
        super().__init__(net)
        encoder = net.lxmert.encoder
        self.directions = [(Direction(x.visual_attention.att), Direction(x.visual_attention.att))
                           for x in encoder.x_layers]

    def feature_size(self) -> int:
        return int(self.net.config.visual_feat_dim)

    def box_size(self) -> int:
        return int(self.net.config.visual_pos_dim)

    def num_classes(self) -> int:
        return int(self.net.config.num_qa_labels)

    def _named_sites(self):
        encoder, cfg = self.net.lxmert.encoder, self.net.config
        found = [(layer.attention.self, Site(f"layer.{i}", "text", "text", i), layer.attention.output.dense)
                 for i, layer in enumerate(encoder.layer)]
        found += [(layer.attention.self, Site(f"r_layers.{i}", "image", "image", i), layer.attention.output.dense)
                  for i, layer in enumerate(encoder.r_layers)]
        for i, (x, (to_image, to_text)) in enumerate(zip(encoder.x_layers, self.directions)):
            name, cross = f"x_layers.{i}", x.visual_attention.output.dense
            found += [(to_image, Site(f"{name}.text_cross", "text", "image", i), cross),
                      (to_text, Site(f"{name}.image_cross", "image", "text", i), cross),
                      (x.lang_self_att.self, Site(f"{name}.lang_self_att", "text", "text", cfg.l_layers + i),
                       x.lang_self_att.output.dense),
                      (x.visn_self_att.self, Site(f"{name}.visn_self_att", "image", "image", cfg.r_layers + i),
                       x.visn_self_att.output.dense)]
        return found

    def attention_forward(self, module, attend: Attend):
        inner = module.attention if isinstance(module, Direction) else module

        def forward(hidden_states, context, attention_mask=None, output_attentions=False):
            out = bert_heads(inner, attend, hidden_states, context, attention_mask)
            return (out, None) if output_attentions else (out,)
        return forward

    def logits(self, x: torch.Tensor, text: Text) -> torch.Tensor:
        layers = self.net.lxmert.encoder.x_layers
        features = self.feature_size()
        try:
            for layer, directions in zip(layers, self.directions):
                layer.cross_att = cross_attention(layer.visual_attention, *directions)
            # positional, so that the tap's pre-hook sees the regions (input_ids, visual_feats, visual_pos, mask)
            return self.net(text.ids, x[..., :features], x[..., features:], text.mask.long()).question_answering_score
        finally:
            for layer in layers:
                layer.__dict__.pop("cross_att", None)

    def modalities(self, text_length: int) -> dict[str, tuple[str, slice]]:
        return {"text": ("text", slice(0, None)), "image": ("image", slice(0, None))}


def cross_attention(layer: nn.Module, to_image: Direction, to_text: Direction):
    """``LxmertXLayer.cross_att`` with its shared ``LxmertCrossAttentionLayer`` run through one stand-in per
    direction: the same computation, language first."""
    def cross_att(lang_input, lang_attention_mask, visual_input, visual_attention_mask, output_x_attentions=False):
        lang = to_image(lang_input, visual_input, visual_attention_mask, output_attentions=output_x_attentions)
        visual = to_text(visual_input, lang_input, lang_attention_mask)
        return (layer.output(lang[0], lang_input), *lang[1:]), (layer.output(visual[0], visual_input),)
    return cross_att
