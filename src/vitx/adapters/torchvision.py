"""Adapter for torchvision's Vision Transformer (``torchvision.models.vit_b_16`` and its family), and its loader.

torchvision's ``EncoderBlock`` runs ``x = input + dropout(self_attention(ln_1(input)))``, then
``x + mlp(ln_2(x))``, where ``self_attention`` is an ``nn.MultiheadAttention`` (batch first). The tap replaces
that module's ``forward``: q, k, v from its packed in-projection (``in_proj_weight``, ``in_proj_bias``), heads
split, the product through the tap, heads merged, ``out_proj``; the class token comes first, then the patches
of ``conv_proj`` row by row.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import state_dict_error
from ..errors import VitxError
from .base import Adapter, Attend, Description, pair, project_values
from .hub import unreachable


class TorchvisionViTAdapter(Adapter):
    framework = "torchvision"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        for i, attn in enumerate(self.attentions()):
            if not isinstance(attn, nn.MultiheadAttention):
                raise VitxError(f"torchvision {type(net).__name__}: block {i}'s self_attention is a "
                                f"{type(attn).__name__}, not the nn.MultiheadAttention the tap reads")
            if not attn.batch_first or not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                raise VitxError(f"torchvision {type(net).__name__}: block {i}'s nn.MultiheadAttention is not "
                                "torchvision's (batch first, one packed in-projection, no extra key/value bias or "
                                "zero attention); the tap reads that one only")

    def describe(self) -> Description:
        net = self.net
        return Description(pair(net.image_size), pair(net.patch_size), 1, 0, int(net.num_classes),
                           dynamic_size=False)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.encoder.layers)

    def attentions(self) -> list[nn.Module]:
        return [block.self_attention for block in self.net.encoder.layers]

    def attention_forward(self, module: nn.MultiheadAttention, attend: Attend):
        def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            if not (query is key is value):
                raise VitxError("the tap reads torchvision's self-attention (query, key and value the same tokens)")
            if key_padding_mask is not None or attn_mask is not None or is_causal:
                raise VitxError("the tap reads torchvision's ViT attention, which takes no mask")
            if need_weights:
                raise VitxError("under the tap, nn.MultiheadAttention gives no weights of its own (need_weights=True): "
                                "read them from the tap (tr.attentions)")
            B, N, D = query.shape
            q, k, v = (t.reshape(B, N, module.num_heads, -1).transpose(1, 2)
                       for t in F.linear(query, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1))
            dropout = module.dropout if module.training else 0.0
            out = attend(q, k, v, module.head_dim ** -0.5, dropout).transpose(1, 2).reshape(B, N, D)
            return module.out_proj(out), None
        return forward

    def value_projection(self, module: nn.MultiheadAttention):
        return partial(project_values, module.out_proj)

    def pixel_layer(self) -> nn.Module:
        if not isinstance(self.net.conv_proj, nn.Conv2d):
            raise VitxError("this torchvision ViT embeds patches with a convolutional stem; relevance rules know "
                            "the linear patch projection (conv_proj) only")
        return self.net.conv_proj

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        raise VitxError("torchvision's ViT projects q, k and v with nn.MultiheadAttention's in_proj_weight, "
                        "not with a Linear layer, so Chefer et al.'s αβ rule cannot be bound to that projection")


def load(name: str, weights: str | None = None) -> tuple[nn.Module, dict]:
    """``torchvision.models.get_model(name)`` with its default weights: from the torch hub cache, the download
    host, or a local state-dict file ``weights`` (.pth or .safetensors); its categories as class names and its
    transforms' mean and std as preprocessing."""
    try:
        from torchvision import models
    except ImportError as err:
        raise VitxError(f"loading 'torchvision:{name}' needs torchvision installed ({err})") from None
    vits = [n for n in models.list_models(module=models)
            if models.get_model_builder(n).__module__ == models.vision_transformer.__name__]
    if name not in vits:
        what = f"torchvision's {name!r} is no Vision Transformer" if name in models.list_models() \
            else f"torchvision has no model named {name!r}"
        raise VitxError(f"{what}; vitx reads torchvision's {', '.join(vits)}")
    default = models.get_model_weights(name).DEFAULT
    if weights is None:
        weights = _cached_or_reachable(name, default.url)
    if weights is None:
        try:
            net = models.get_model(name, weights=default)
        except Exception as err:  # a download broken off, a corrupt file
            raise VitxError(f"could not download the weights of torchvision model {name!r} ({default.url}): "
                            f"{state_dict_error(err)}") from None
    else:
        net = models.get_model(name, weights=None, num_classes=len(default.meta["categories"]),
                               image_size=default.meta["min_size"][0])
        _load_state(net, name, weights)
    transforms = default.transforms()
    return net, {"name": f"torchvision:{name}", "mean": tuple(transforms.mean), "std": tuple(transforms.std),
                 "class_names": tuple(default.meta["categories"])}


def _cached_or_reachable(name: str, url: str) -> str | None:
    """The torch hub cache's copy of the weights at ``url``; None where it has none and the host answers (then
    torchvision downloads them); a VitxError naming the file to provide where it does not."""
    file = url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / file
    if cached.is_file():
        return str(cached)
    if reason := unreachable(url, "the download host"):
        raise VitxError(f"torchvision model {name!r}: {reason} and its weights ({file}) are not in the torch hub "
                        f"cache; pass a local file: load_model('torchvision:{name}', weights='FILE') or vitx explain "
                        f"--model torchvision:{name} --weights FILE")
    return None


def _load_state(net: nn.Module, name: str, weights: str) -> None:
    """``net``'s weights from a state-dict file (.safetensors, or torch's .pth)."""
    path = Path(weights)
    if not path.is_file():
        raise VitxError(f"weights file {str(weights)!r} for torchvision model {name!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:  # an unreadable file or one for another model
        raise VitxError(f"could not load weights for torchvision model {name!r} from the file {str(weights)!r}: "
                        f"{state_dict_error(err)}") from None
