"""Adapter for timm's VisionTransformer family (ViT, DeiT, distilled DeiT, register tokens).

timm's ``Attention.forward`` (timm >= 1.0) is: qkv linear -> heads -> q_norm/k_norm -> softmax(q k^T * scale
+ mask) v (fused or not) -> norm -> optional gate -> proj -> proj_drop. The replacement below keeps every
step and leaves the user's ``fused_attn`` flag alone.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..errors import VitxError
from .base import Adapter, Attend, Description, pair, project_values


def _timm_attention_type():
    from timm.layers import Attention
    return Attention


def _timm_pass_types():
    """timm's layers that are the identity (drop-path in eval mode) or a per-channel scale."""
    from timm.layers import DropPath, LayerScale
    return DropPath, LayerScale


class TimmViTAdapter(Adapter):
    framework = "timm"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        attention_type = _timm_attention_type()
        for i, block in enumerate(getattr(net, "blocks", [])):
            if not isinstance(getattr(block, "attn", None), attention_type):
                raise VitxError(f"timm model {type(net).__name__}: block {i} has attention of type "
                                f"{type(getattr(block, 'attn', None)).__name__}, which the tap cannot inspect")

    def describe(self) -> Description:
        net = self.net
        pe = net.patch_embed
        dynamic = bool(getattr(net, "dynamic_img_size", False)) or not getattr(pe, "strict_img_size", True)
        return Description(pair(pe.img_size), pair(pe.patch_size), int(net.num_prefix_tokens),
                           0 if getattr(net, "cls_token", None) is not None else None,
                           int(net.num_classes), dynamic_size=dynamic)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def attentions(self) -> list[nn.Module]:
        return [block.attn for block in self.net.blocks]

    def attention_forward(self, module, attend: Attend):
        def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
            if is_causal:
                raise VitxError("the tap does not support causal attention")
            B, N, _ = x.shape
            gate = module.gate(x).sigmoid() if getattr(module, "gate", None) is not None else None
            q, k, v = module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = module.q_norm(q), module.k_norm(k)
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
            dropout = module.attn_drop.p if module.training else 0.0
            out = module.norm(attend(q, k, v, module.scale, dropout, attn_mask).transpose(1, 2).reshape(B, N, -1))
            if gate is not None:
                out = out * gate
            return module.proj_drop(module.proj(out))
        return forward

    def value_projection(self, module):
        """v W_oᵀ with W_o = ``proj``; refused where ``norm`` (scale_norm) or a gate sits between A v and
        ``proj``: the output is then no weighted sum of per-token projected values."""
        if not isinstance(module.norm, nn.Identity) or getattr(module, "gate", None) is not None:
            raise VitxError(f"timm model {type(self.net).__name__}: its attention normalises (scale_norm) or gates "
                            "the attention product before the output projection, so its output is no sum of "
                            "per-token projected values; the tap cannot record projected_values for it")
        return partial(project_values, module.proj)

    def pixel_layer(self) -> nn.Module:
        pe = self.net.patch_embed
        if getattr(pe, "backbone", None) is not None:
            raise VitxError(f"timm model {type(self.net).__name__} embeds patches with a CNN backbone "
                            f"({type(pe.backbone).__name__}); relevance rules know the linear patch projection only")
        return pe.proj

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        from timm.models.vision_transformer import Block
        if type(block) is not Block:
            raise VitxError(f"timm block type {type(block).__name__} is not the pre-norm Block whose residual "
                            "additions relevance rules know")
        return block.norm1, block.norm2

    def layer_kind(self, module: nn.Module) -> str:
        if any(module is getattr(block.attn, "gate", None) for block in self.net.blocks):
            return "attention gate"
        return "pass" if isinstance(module, _timm_pass_types()) else super().layer_kind(module)


def load(name: str, weights: str | None = None) -> tuple[nn.Module, dict]:
    """``timm.create_model(name, pretrained=True)``, from the hub or from a local ``weights`` file;
    returns the network and the preprocessing facts timm knows for it."""
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError as err:
        raise VitxError(f"loading 'timm:{name}' needs timm installed ({err})") from None
    if not timm.is_model(name):
        raise VitxError(f"timm has no model named {name!r}")
    if weights and not Path(weights).is_file():
        raise VitxError(f"weights file {str(weights)!r} for timm model {name!r} does not exist")
    overlay = {"file": str(weights)} if weights else None
    try:
        net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as err:  # timm raises many kinds when the hub or the file is unreachable
        where = f"the file {weights!r}" if weights else "the hub (no network?); pass weights=<local file>"
        raise VitxError(f"could not load weights for timm model {name!r} from {where}: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    data = resolve_data_config({}, model=net)
    return net, {"mean": tuple(data["mean"]), "std": tuple(data["std"]), "name": f"timm:{name}",
                 "class_names": _imagenet_names(net.num_classes)}


def _imagenet_names(num_classes: int) -> tuple[str, ...]:
    if num_classes != 1000:
        return ()
    from timm.data import ImageNetInfo
    return tuple(ImageNetInfo().label_descriptions())
