"""Hugging Face ``DetrForObjectDetection`` (Carion et al., ECCV 2020): a convolutional backbone, a transformer encoder
over its last feature map, and a decoder whose object queries each give class logits ("no object" last) and a box.

Sites in forward order: the encoder layers' self-attention ("image" over "image"), then per decoder layer the
queries' self-attention ("queries" over "queries") and their cross-attention over the encoder's output ("queries"
over "image"). DETR adds position embeddings to the queries and keys of every attention, never to its values: the
encoder's sine embeddings of the feature map (encoder keys and queries, cross-attention keys) and the learned object
query embeddings (decoder self-attention queries and keys, cross-attention queries); :func:`detr_forward` computes q,
k and v as transformers' ``DetrSelfAttention`` and ``DetrCrossAttention`` do.

The image tokens are the backbone's last feature map, row-major: the token grid is that map. The adapter measures the
backbone's stride s once (its feature map of a blank S×S image, S = :data:`PROBE`) and describes the model with
patches of s×s pixels, so ``model.layout(x)`` gives the grid (H/s, W/s) of any input whose sides are multiples of s
(ResNet-50: 32; a dilated C5: 16); other sizes are refused there, as the map's size would be rounded.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ...errors import VitxError
from ..base import Adapter, Attend, Description, ListedSites, Site, project_values
from .preprocessing import processor_facts

PROBE = 256         # side of the blank image whose feature map gives the backbone's stride
DETR_SIZE = 800     # DetrImageProcessor's shortest edge: the image size where the saved processor states none


class HFDetrAdapter(ListedSites, Adapter):
    framework = "hf"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        for module in self.attentions():
            if not all(hasattr(module, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
                import transformers
                raise VitxError(f"Hugging Face {type(net).__name__}: its {type(module).__name__} has no q/k/v/o "
                                f"projections: transformers {transformers.__version__} lays it out otherwise; vitx "
                                "reads the layout of transformers >= 5.18")

    def describe(self) -> Description:
        classes = int(self.net.config.num_labels)
        size, facts = processor_facts(self.net.config, classes)
        stride = self.stride()
        return Description(size or (DETR_SIZE, DETR_SIZE), (stride, stride), 0, None, classes, dynamic_size=True,
                           kind="detr", **facts)

    def stride(self) -> int:
        """Pixels per feature-map cell of the backbone's last map (the one the encoder reads)."""
        backbone = self.net.model.backbone
        weight = next(self.net.parameters())
        with torch.no_grad():
            blank = weight.new_zeros(1, self.net.config.num_channels, PROBE, PROBE)
            feature_map, _ = backbone(blank, blank.new_ones(1, PROBE, PROBE))[-1]
        height, width = feature_map.shape[-2:]
        if height != width or PROBE % height:
            raise VitxError(f"the backbone of {type(self.net).__name__} maps a {PROBE}x{PROBE} image to a "
                            f"{height}x{width} feature map, which is no whole stride: vitx cannot lay its tokens out")
        return PROBE // height

    def _named_sites(self) -> list[tuple[nn.Module, Site]]:
        model = self.net.model
        found = [(layer.self_attn, Site(f"encoder.layers.{i}.self_attn", "image", "image", i))
                 for i, layer in enumerate(model.encoder.layers)]
        for i, layer in enumerate(model.decoder.layers):
            name = f"decoder.layers.{i}"
            found += [(layer.self_attn, Site(f"{name}.self_attn", "queries", "queries", i)),
                      (layer.encoder_attn, Site(f"{name}.encoder_attn", "queries", "image", i))]
        return found

    def blocks(self) -> list[nn.Module]:
        """The encoder layers, then the decoder layers."""
        model = self.net.model
        return [*model.encoder.layers, *model.decoder.layers]

    def attention_forward(self, module, attend: Attend):
        return detr_forward(module, attend)

    def value_projection(self, module):
        return partial(project_values, module.o_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, queries, classes + 1), "no object" last."""
        return self.detect(x)[0]

    def detect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (B, queries, classes + 1), boxes (B, queries, 4) as (cx, cy, w, h) fractions of the image).
        Every pixel is real (transformers' default pixel mask of ones); x goes positionally, so that the tap's
        pre-hook sees it."""
        out = self.net(x)
        return out.logits, out.pred_boxes


def detr_forward(module: nn.Module, attend: Attend):
    """A replacement for the ``forward`` of a ``DetrSelfAttention`` or ``DetrCrossAttention`` that runs the product
    through ``attend``: queries from the hidden states plus their position embeddings, keys from the key states (the
    hidden states themselves in self-attention) plus theirs, values from the key states alone."""
    def heads(tokens: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        return projection(tokens).view(*tokens.shape[:-1], -1, module.head_dim).transpose(1, 2)

    def product(hidden_states, key_states, attention_mask, query_position, key_position):
        queries = hidden_states if query_position is None else hidden_states + query_position
        keys = key_states if key_position is None else key_states + key_position
        dropout = module.attention_dropout if module.training else 0.0
        out = attend(heads(queries, module.q_proj), heads(keys, module.k_proj), heads(key_states, module.v_proj),
                     module.scaling, dropout, attention_mask)
        return module.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)), None

    if type(module).__name__ == "DetrCrossAttention":
        def forward(hidden_states, key_value_states, attention_mask=None, position_embeddings=None,
                    encoder_position_embeddings=None, **kwargs):
            return product(hidden_states, key_value_states, attention_mask, position_embeddings,
                           encoder_position_embeddings)
    else:
        def forward(hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
            return product(hidden_states, hidden_states, attention_mask, position_embeddings, position_embeddings)
    return forward
