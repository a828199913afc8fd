"""Hugging Face ``VisualBertForQuestionAnswering``: one stream over [question tokens; regions].

Its encoder layers are "joint" self-attention sites over the question's tokens then the regions. Its head reads the
question's last word piece (the token before [SEP], at ``mask.sum(1) - 2``, as VisualBERT's VQA code does), not
[CLS]: that token's row is what explanations read.
"""
from __future__ import annotations

import torch

from ...errors import VitxError
from ...text import Text
from ..base import Attend, Site
from .regions import HFRegionAdapter, bert_heads


class HFVisualBertAdapter(HFRegionAdapter):
    def __init__(self, net):
        super().__init__(net)
        if net.config.bypass_transformer:
            raise VitxError("VisualBERT with bypass_transformer=True runs its text alone before one joint layer, "
                            "which vitx's attention sites do not describe; vitx reads the joint stream of the "
                            "default configuration")

    def feature_size(self) -> int:
        return int(self.net.config.visual_embedding_dim)

    def _named_sites(self):
        return [(layer.attention.self, Site(f"encoder.layer.{i}", "joint", "joint", i), layer.attention.output.dense)
                for i, layer in enumerate(self.net.visual_bert.encoder.layer)]

    def attention_forward(self, module, attend: Attend):
        def forward(hidden_states, attention_mask=None, output_attentions=False):
            out = bert_heads(module, attend, hidden_states, hidden_states, attention_mask)
            return (out, None) if output_attentions else (out,)
        return forward

    def logits(self, x: torch.Tensor, text: Text) -> torch.Tensor:
        # positional, so that the tap's pre-hook sees the regions (input_ids, attention_mask, token_type_ids,
        # position_ids, inputs_embeds, visual_embeds)
        return self.net(text.ids, text.mask.long(), None, None, None, x).logits

    def modalities(self, text_length: int) -> dict[str, tuple[str, slice]]:
        return {"text": ("joint", slice(0, text_length)), "image": ("joint", slice(text_length, None))}

    def head_token(self, text: Text) -> torch.Tensor:
        return text.mask.sum(1) - 2
