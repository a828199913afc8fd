"""What Hugging Face's vision transformers share: a config (a vision sub-config for CLIP and SigLIP), an encoder
of pre-norm layers, labels and an image processor; and, in transformers >= 5.18, attention modules that project
q, k, v with ``q_proj``/``k_proj``/``v_proj``, call the configured attention implementation (eager, sdpa,
flash...) and project back. A family's adapter names where its layers, attention and norms are.

A vision tower (a model class with no classifier: ``Dinov2Model``, ``CLIPVisionModel``...) is read by the tap
like its classifier, and has no classes: ``vitx.explain`` refuses it, naming the classifier to load.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ...errors import VitxError
from ..base import Adapter, Attend, Description, pair, project_values
from .preprocessing import processor_facts


class HFAdapter(Adapter):
    framework = "hf"
    backbone = ""                      # the classifier's attribute that holds the encoder model
    towers: dict[str, str] = {}        # bare model class -> the classifier class on it
    resizes = True                     # forward takes interpolate_pos_encoding (else it resamples by itself)
    projections = ("q_proj", "k_proj", "v_proj")   # the attention's q, k, v projections

    def __init__(self, net: nn.Module):
        super().__init__(net)
        name = type(net).__name__
        self.tower = next((self.towers[c.__name__] for c in type(net).__mro__ if c.__name__ in self.towers), None)
        self.model = net if self.tower else getattr(net, self.backbone)
        self.vision = getattr(net.config, "vision_config", net.config)
        self.layers = list(self.encoder_layers())
        for i, attention in enumerate(self.attentions()):
            if not all(hasattr(attention, p) for p in self.projections):
                import transformers
                raise VitxError(f"Hugging Face model {name}: layer {i} attention has no q/k/v projections "
                                f"(q_proj, k_proj, v_proj): transformers {transformers.__version__} lays it out "
                                "otherwise; vitx reads the layout of transformers >= 5.18")

    # what a family says
    def encoder_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def prefix(self) -> tuple[int, int | None]:
        """(prefix tokens before the patches, the class token's index or None)."""
        return 1, 0

    def pooling(self) -> str:
        raise NotImplementedError

    def output_projection(self, attention: nn.Module) -> nn.Linear:
        return attention.o_proj

    # shared
    def describe(self) -> Description:
        classes = 0 if self.tower else int(self.net.config.num_labels)
        size, facts = processor_facts(self.net.config, classes)
        prefix, cls_index = self.prefix()
        return Description(size or pair(self.vision.image_size), pair(self.vision.patch_size), prefix, cls_index,
                           classes, dynamic_size=True, pooling=self.pooling(), **facts)

    def blocks(self) -> list[nn.Module]:
        return self.layers

    def attentions(self) -> list[nn.Module]:
        return [layer.attention for layer in self.layers]

    def attention_forward(self, module, attend: Attend):
        return qkv_forward(module, attend, self.output_projection(module))

    def value_projection(self, module):
        return partial(project_values, self.output_projection(module))

    def pixel_layer(self) -> nn.Module:
        return self.model.embeddings.patch_embeddings.projection

    def layer_kind(self, module: nn.Module) -> str:
        """transformers' activations are "activation"; "pass" are its drop-path and layer scale modules, a pooler
        with no layers of its own (it selects the class token), and tables read by position (position embeddings,
        relative position biases: constant in the image, so nothing reaches the pixels through them)."""
        if isinstance(module, nn.Embedding) or type(module).__name__.endswith(("RelativePositionBias", "Pooler")):
            return "pass"
        return super().layer_kind(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tower:
            raise VitxError(f"Hugging Face {type(self.net).__name__} is a vision tower with no classifier, so it has "
                            f"no class to explain: load {self.tower} to explain its predictions, or read this "
                            "model's attention with vitx.trace")
        resize = {"interpolate_pos_encoding": tuple(x.shape[-2:]) != pair(self.vision.image_size)} \
            if self.resizes else {}
        return self.net(pixel_values=x, **resize).logits


def qkv_forward(module: nn.Module, attend: Attend, output: nn.Linear):
    """A replacement for transformers' attention ``forward`` (q/k/v projections, heads of ``head_dim``, the
    attention implementation, then ``output``) that runs the product through ``attend``; an attention mask (a
    relative position bias, say) is added to the scores."""
    scale = getattr(module, "scaling", None) or module.scale
    dropout = getattr(module, "attention_dropout", None)
    dropout = module.dropout if dropout is None else dropout                   # CLIP and SigLIP: a float

    def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, module.head_dim)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2)
                   for proj in (module.q_proj, module.k_proj, module.v_proj))
        out = attend(q, k, v, scale, dropout if module.training else 0.0, attention_mask)
        return output(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)), None
    return forward
