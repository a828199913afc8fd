"""Adapter for timm's VisionTransformer family (ViT, DeiT, DeiT III, distilled DeiT, register tokens, DINOv2),
BEiT, and EVA / EVA-02.

timm's ``Attention.forward`` (timm >= 1.0) is: qkv linear -> heads -> q_norm/k_norm -> softmax(q k^T * scale
+ mask) v (fused or not) -> norm -> optional gate -> proj -> proj_drop. EVA's ``EvaAttention`` is the same
with q, k, v from one projection (q and v biases) or three, and rotary position embeddings (rope) applied to
q and k of the patch tokens, after the prefix tokens, between q_norm/k_norm and the product. The replacements
below keep every step and leave the user's ``fused_attn`` flag alone.
"""
from __future__ import annotations

from functools import cache, partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import state_dict_error
from ..errors import VitxError
from .hub import cached_file, offline_reason
from .base import Adapter, Attend, Description, pair, project_values


def _timm_attention_types():
    """timm's attention modules the tap knows: ViT's, BEiT's (with its relative position bias), and EVA's and
    its rope ViTs' (with rotary position embeddings)."""
    from timm.layers import Attention, AttentionRope
    from timm.models.beit import Attention as BeitAttention
    from timm.models.eva import EvaAttention
    return Attention, BeitAttention, (EvaAttention, AttentionRope)


def architecture(net: nn.Module) -> str:
    """timm's name for ``net``'s architecture (its class name where timm did not record one)."""
    return (getattr(net, "pretrained_cfg", None) or {}).get("architecture") or type(net).__name__


class TimmViTAdapter(Adapter):
    framework = "timm"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        supported = _timm_attention_types()
        for i, block in enumerate(getattr(net, "blocks", [])):
            attn = getattr(block, "attn", None)
            if attn is None:
                raise VitxError(f"timm model {architecture(net)}: its {type(block).__name__} blocks run attention "
                                "branches and the MLP side by side (parallel blocks), with no one attention module "
                                "per block; the tap records sequential blocks with one attention each")
            if not isinstance(attn, supported):
                raise VitxError(f"timm model {architecture(net)}: block {i} has attention of type "
                                f"{type(attn).__module__}.{type(attn).__name__}, which the tap cannot inspect "
                                "(it knows timm's ViT and BEiT attention, and EVA's EvaAttention and AttentionRope)")

    def describe(self) -> Description:
        net = self.net
        pe = net.patch_embed
        dynamic = bool(getattr(net, "dynamic_img_size", False)) or not getattr(pe, "strict_img_size", True)
        # a hybrid's CNN backbone strides by feature_ratio before its patch projection
        patch = tuple(r * p for r, p in zip(pair(getattr(pe, "feature_ratio", 1)), pair(pe.patch_size)))
        return Description(pair(pe.img_size), patch, int(net.num_prefix_tokens),
                           0 if getattr(net, "cls_token", None) is not None else None,
                           int(net.num_classes), dynamic_size=dynamic, pooling=head_pooling(net),
                           **recorded_preprocessing(net, int(net.num_classes)))

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def attentions(self) -> list[nn.Module]:
        return [block.attn for block in self.net.blocks]

    def attention_forward(self, module, attend: Attend):
        _, beit, eva = _timm_attention_types()
        if isinstance(module, beit):
            return _beit_attention_forward(module, attend)
        if isinstance(module, eva):                       # EvaAttention, AttentionRope: rope passed in
            def forward(x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                        is_causal: bool = False):
                return _attention(module, attend, x, rope, attn_mask, is_causal)
            return forward

        def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
            return _attention(module, attend, x, None, attn_mask, is_causal)
        return forward

    def value_projection(self, module):
        """v W_oᵀ with W_o = ``proj``; refused where ``norm`` (ViT's scale_norm, EVA's scale_attn_inner) or a
        gate sits between A v and ``proj``: the output is then no weighted sum of per-token projected values."""
        norm = getattr(module, "norm", None)                  # BEiT's attention has none
        if not isinstance(norm, (nn.Identity, type(None))) or getattr(module, "gate", None) is not None:
            raise VitxError(f"timm model {architecture(self.net)}: its attention normalises (scale_norm, "
                            "scale_attn_inner) or gates "
                            "the attention product before the output projection, so its output is no sum of "
                            "per-token projected values; the tap cannot record projected_values for it")
        return partial(project_values, module.proj)

    def pixel_layer(self) -> nn.Module:
        pe = self.net.patch_embed
        if getattr(pe, "backbone", None) is not None:
            raise VitxError(f"timm model {architecture(self.net)} embeds patches with a CNN backbone "
                            f"({type(pe.backbone).__name__}); relevance rules know the linear patch projection only")
        return pe.proj

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        from timm.models.vision_transformer import Block
        if type(block) is not Block:
            raise VitxError(f"timm model {architecture(self.net)}: its block type {type(block).__module__}."
                            f"{type(block).__name__} is not the pre-norm Block of timm's ViT, whose residual "
                            "additions relevance rules know")
        return block.norm1, block.norm2

    def layer_kind(self, module: nn.Module) -> str:
        if any(module is getattr(block.attn, "gate", None) for block in self.net.blocks):
            return "attention gate"
        if module is getattr(self.net, "rope", None):  # EVA: makes the rotary embedding from the grid alone; its
            return "pass"                              # rotation of q and k is linear, the gradient its rule
        return super().layer_kind(module)


def _attention(module, attend: Attend, x: torch.Tensor, rope, attn_mask, is_causal: bool) -> torch.Tensor:
    """timm's ViT or EVA attention on tokens x (B, N, D), the product through ``attend``."""
    if is_causal:
        raise VitxError("the tap does not support causal attention")
    B, N, _ = x.shape
    q, k, v = _qkv(module, x)
    q, k = module.q_norm(q), module.k_norm(k)
    if rope is not None:                                  # EVA: the patch tokens only, after the prefix tokens
        from timm.layers import apply_rot_embed_cat
        n, half = module.num_prefix_tokens, getattr(module, "rotate_half", False)
        q, k = (torch.cat([t[:, :, :n], apply_rot_embed_cat(t[:, :, n:], rope, half=half)], 2).type_as(v)
                for t in (q, k))
    if getattr(module, "num_kv_groups", 1) > 1:          # AttentionRope's grouped-query attention
        k, v = (t.repeat_interleave(module.num_kv_groups, dim=1) for t in (k, v))
    dropout = module.attn_drop.p if module.training else 0.0
    out = module.norm(attend(q, k, v, module.scale, dropout, attn_mask).transpose(1, 2).reshape(B, N, -1))
    if getattr(module, "gate", None) is not None:
        out = out * module.gate(x).sigmoid()
    return module.proj_drop(module.proj(out))


def _qkv(module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, heads, N, head_dim) as timm computes them: one projection ``qkv`` (ViT's with its own bias;
    BEiT's and EVA's with q and v biases beside it, a zero k bias between), or EVA's three ``q_proj``, ``k_proj``,
    ``v_proj`` (k and v with fewer heads under grouped-query attention)."""
    B, N, _ = x.shape
    if module.qkv is None:
        return tuple(proj(x).reshape(B, N, -1, module.head_dim).transpose(1, 2)
                     for proj in (module.q_proj, module.k_proj, module.v_proj))
    return fused_qkv(module, x).reshape(B, N, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def fused_qkv(module, x: torch.Tensor) -> torch.Tensor:
    """timm's one projection ``qkv`` of tokens x (..., D) -> (..., 3·heads·head_dim): with its own bias, or with
    q and v biases beside it and a zero k bias between (BEiT, EVA, Swin V2)."""
    q_bias = getattr(module, "q_bias", None)
    if q_bias is None:
        return module.qkv(x)
    bias = torch.cat((q_bias, module.k_bias, module.v_bias))
    if getattr(module, "qkv_bias_separate", False):       # EVA's and Swin V2's option; BEiT's projection has no bias
        return module.qkv(x) + bias
    return F.linear(x, module.qkv.weight, bias)


def _beit_attention_forward(module, attend: Attend):
    """BEiT's attention (timm.models.beit): q, k, v from one projection with q and v biases, and the relative
    position bias (the block's own, plus the model's shared one) added to the scores as a mask."""
    def forward(x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None):
        B, N, _ = x.shape
        q, k, v = _qkv(module, x)
        mask = module._get_rel_pos_bias() if module.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            mask = shared_rel_pos_bias if mask is None else mask + shared_rel_pos_bias
        dropout = module.attn_drop.p if module.training else 0.0
        out = attend(q, k, v, module.scale, dropout, mask).transpose(1, 2).reshape(B, N, -1)
        return module.proj_drop(module.proj(out))
    return forward


def recorded_preprocessing(net: nn.Module, num_classes: int) -> dict:
    """:func:`preprocessing` of the pretrained configuration timm recorded on ``net`` ({} where it has none)."""
    return preprocessing(getattr(net, "pretrained_cfg", None) or {}, num_classes)


def head_pooling(net: nn.Module) -> str:
    """What timm's head reads: "cls" (global_pool 'token'), "avg", "max", "avgmax", "map" (attention pooling)..."""
    pool = getattr(net, "global_pool", "token")
    return {"token": "cls", "": "none"}.get(pool, pool)


def preprocessing(pretrained_cfg: dict, num_classes: int) -> dict:
    """mean, std and class names as timm resolves them for a pretrained configuration (``timm.data``'s rules);
    ImageNet's class names where the head has the classes of the ImageNet subset the weights were trained on."""
    if not pretrained_cfg:
        return {}
    from timm.data import infer_imagenet_subset, resolve_data_config
    data = resolve_data_config(pretrained_cfg=pretrained_cfg)
    subset = infer_imagenet_subset({"num_classes": num_classes}) \
        if pretrained_cfg.get("num_classes") == num_classes else None
    return {"mean": tuple(data["mean"]), "std": tuple(data["std"]),
            "class_names": _imagenet_names(subset) if subset else ()}


@cache
def _imagenet_names(subset: str) -> tuple[str, ...]:
    """timm's class descriptions of an ImageNet subset (read once: parsing them costs ~0.1 s a model)."""
    from timm.data import ImageNetInfo
    return tuple(ImageNetInfo(subset).label_descriptions())


def pretrained_config(arch: str) -> dict:
    """timm's pretrained configuration (default tag) for architecture name ``arch``; {} without timm or the
    name."""
    try:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(arch)
    except (ImportError, RuntimeError):
        return {}
    return cfg.to_dict() if cfg is not None else {}


def load(name: str, weights: str | None = None) -> tuple[nn.Module, dict]:
    """``timm.create_model(name, pretrained=True)``, from the hub or from a local ``weights`` file. Where the
    hub cannot be reached its cache is used, and a miss fails at once (no retries)."""
    try:
        import timm
    except ImportError as err:
        raise VitxError(f"loading 'timm:{name}' needs timm installed ({err})") from None
    if not timm.is_model(name):
        raise VitxError(f"timm has no model named {name!r}")
    if weights and not Path(weights).is_file():
        raise VitxError(f"weights file {str(weights)!r} for timm model {name!r} does not exist")
    if not weights and (reason := offline_reason()):
        weights = cached_file(pretrained_config(name).get("hf_hub_id"), ("model.safetensors", "pytorch_model.bin"))
        if weights is None:
            raise VitxError(f"timm model {name!r}: {reason} and its weights are not in the local cache; pass a local "
                            f"file: load_model('timm:{name}', weights='FILE') or vitx explain --model timm:{name} "
                            "--weights FILE")
    overlay = {"file": str(weights)} if weights else None
    try:
        net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as err:  # timm raises many kinds when the hub or the file is unreachable
        where = f"the file {str(weights)!r}" if weights else "the hub"
        raise VitxError(f"could not load weights for timm model {name!r} from {where}: "
                        f"{state_dict_error(err)}") from None
    return net, {"name": f"timm:{name}"}
