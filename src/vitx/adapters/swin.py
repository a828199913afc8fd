"""Adapter for Swin (Liu et al., ICCV 2021): timm's ``SwinTransformer`` and ``SwinTransformerV2`` (Liu et al.,
CVPR 2022: cosine attention with a learnt logit scale and a continuous position bias) and Hugging Face's
``SwinForImageClassification`` and ``Swinv2ForImageClassification``.

The tap's blocks are the Swin blocks of all stages in order. Each attention module receives the windows of its
block, (B·nW, w², C); the replacement below splits them into (B, heads, nW, w², head_dim) before the tap's
``attend``, so that the tap records attention as (B, heads, nW, w², w²), with the relative position bias and the
shifted windows' mask broadcast over it. :meth:`SwinAdapter.windows` says how each block's windows sit on its
stage's token map (:class:`vitx.windows.WindowGeometry`). The tap's tokens are every block's output as
(B, H·W, C), row-major over the stage's map. Patch merging sits at the start of stages 1.. in timm and at the
end of stages ..L−1 in Hugging Face; the geometries of consecutive blocks show it either way (the map halves).
"""
from __future__ import annotations

import math
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitxError
from ..windows import WindowGeometry
from .base import Adapter, Attend, Description, pair
from .timm import fused_qkv, head_pooling, recorded_preprocessing

TIMM_SWINS = ("SwinTransformer", "SwinTransformerV2")
HF_SWINS = ("SwinForImageClassification", "Swinv2ForImageClassification")


class SwinAdapter(Adapter):
    windowed = True

    def __init__(self, net: nn.Module, framework: str):
        super().__init__(net)
        self.framework = framework
        self.backbone = None if framework == "timm" else getattr(net, "swin", None) or net.swinv2
        self._blocks = [block for stage in self._stages() for block in stage.blocks]

    def _stages(self):
        return self.net.layers if self.framework == "timm" else self.backbone.encoder.layers

    def describe(self) -> Description:
        net = self.net
        if self.framework == "timm":
            pe, classes = net.patch_embed, int(net.num_classes)
            return Description(pair(pe.img_size), pair(pe.patch_size), 0, None, classes, dynamic_size=False,
                               kind="swin", pooling=head_pooling(net), **recorded_preprocessing(net, classes))
        from .hf.preprocessing import processor_facts
        cfg = net.config
        _, facts = processor_facts(cfg, int(cfg.num_labels))    # the model's windows are built for its own size
        return Description(pair(cfg.image_size), pair(cfg.patch_size), 0, None, int(cfg.num_labels),
                           dynamic_size=False, kind="swin", pooling="avg", **facts)

    def blocks(self) -> list[nn.Module]:
        return list(self._blocks)

    def attentions(self) -> list[nn.Module]:
        if self.framework == "timm":
            return [block.attn for block in self._blocks]
        return [getattr(block.attention, "self", block.attention) for block in self._blocks]   # V2: .self

    def windows(self, block: int) -> WindowGeometry:
        """How block ``block``'s windows sit on its stage's token map, at the model's image size (which is fixed:
        read once)."""
        return self._geometries[block % len(self._blocks)]

    @cached_property
    def _geometries(self) -> list[WindowGeometry]:
        return [self._geometry(index) for index in range(len(self._blocks))]

    def _geometry(self, index: int) -> WindowGeometry:
        if self.framework == "timm" or self.backbone is getattr(self.net, "swinv2", None):
            b = self._blocks[index]                     # sizes fixed when the model was built
            return WindowGeometry(pair(b.input_resolution), pair(b.window_size), pair(b.shift_size))
        cfg = self.net.config                           # HF Swin sets them on its first forward
        grid = tuple(math.ceil(s / p) for s, p in zip(pair(cfg.image_size), pair(cfg.patch_size)))
        for stage in self._stages():
            if index < len(stage.blocks):
                break
            index -= len(stage.blocks)
            grid = tuple((g + 1) // 2 for g in grid)
        window, shift = cfg.window_size, (cfg.window_size // 2 if index % 2 else 0)
        if min(grid) <= window:                  # SwinLayer.set_shift_and_window_size
            window, shift = min(grid), 0
        return WindowGeometry(grid, (window, window), (shift, shift))

    def block_tokens(self, output):
        if self.framework == "hf":
            return super().block_tokens(output)
        tokens = output.flatten(1, 2)                                  # timm's blocks keep (B, H, W, C)
        return tokens, tokens.view_as(output)

    def attention_forward(self, module, attend: Attend):
        geometry = self.windows(next(i for i, m in enumerate(self.attentions()) if m is module))
        windows = geometry.num_windows

        def split(t: torch.Tensor, heads: int) -> torch.Tensor:
            """(B·nW, w², heads·d) -> (B, heads, nW, w², d)."""
            return t.unflatten(0, (-1, windows)).unflatten(-1, (heads, -1)).permute(0, 3, 1, 2, 4)

        def merge(context: torch.Tensor) -> torch.Tensor:
            """(B, heads, nW, w², d) -> (B·nW, w², heads·d)."""
            return context.permute(0, 2, 3, 1, 4).flatten(3).flatten(0, 1)

        def scores_mask(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            """Relative position bias (1, heads, w², w²) plus the shift mask (nW, w², w²) -> broadcast to
            (1, heads, nW, w², w²)."""
            bias = bias.unsqueeze(2)
            return bias if mask is None else bias + mask.to(bias.dtype)[None, None]

        if hasattr(module, "continuous_position_bias_mlp"):                   # HF's Swinv2
            def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *_args):
                heads = module.num_attention_heads
                q, k, v = (split(proj(hidden_states), heads) for proj in (module.query, module.key, module.value))
                q, k, scale, bias = _cosine(q, k, module.logit_scale, module.continuous_position_bias_mlp,
                                            module.relative_coords_table, module.relative_position_index)
                dropout = module.dropout.p if module.training else 0.0
                twice = None if attention_mask is None else 2 * attention_mask      # HF adds its mask twice
                return merge(attend(q, k, v, scale, dropout, scores_mask(bias, twice))), None
            return forward

        if self.framework == "hf":
            def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
                heads = module.num_attention_heads
                q, k, v = (split(proj(hidden_states), heads) for proj in (module.q_proj, module.k_proj, module.v_proj))
                dropout = module.attention_dropout if module.training else 0.0
                mask = scores_mask(module.relative_position_bias(), attention_mask)
                out = attend(q, k, v, module.scaling, dropout, mask)
                return module.o_proj(merge(out)), None
            return forward

        cosine = hasattr(module, "logit_scale")                        # timm's SwinTransformerV2

        def forward(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            heads = module.num_heads
            q, k, v = (split(t, heads) for t in fused_qkv(module, x).chunk(3, -1))
            dropout = module.attn_drop.p if module.training else 0.0
            if cosine:
                q, k, scale, bias = _cosine(q, k, module.logit_scale, module.cpb_mlp, module.relative_coords_table,
                                            module.relative_position_index)
            else:
                scale, bias = module.scale, module._get_rel_pos_bias()
            out = attend(q, k, v, scale, dropout, scores_mask(bias, mask))
            return module.proj_drop(module.proj(merge(out)))
        return forward

    def value_projection(self, module):
        raise VitxError("the tap records projected values per flat token, and Swin attends within shifted windows")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if self.framework == "timm" else self.net(pixel_values=x).logits

    def pixel_layer(self) -> nn.Module:
        if self.framework == "timm":
            return self.net.patch_embed.proj
        return self.backbone.embeddings.patch_embeddings.projection

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        if any(hasattr(attn, "logit_scale") for attn in self.attentions()):
            raise VitxError("Swin V2's blocks are post-norm (x + norm(f(x))), and relevance rules know pre-norm blocks")
        if self.framework == "hf":
            return block.layernorm_before, block.layernorm_after
        return block.norm1, block.norm2

    def layer_kind(self, module: nn.Module) -> str:
        """Besides the base kinds: the head's pooling, drop-path, the relative position bias table (no function
        of the image) and the unused softmax module of timm's attention pass relevance through as they are; V2's
        continuous position bias (an MLP of the relative coordinates) gets a kind of its own, which no rule
        takes."""
        if any(module in mlp.modules() for attn in self.attentions()
               for mlp in (getattr(attn, "cpb_mlp", None), getattr(attn, "continuous_position_bias_mlp", None)) if mlp):
            return "Swin V2's continuous position bias"
        pooling = self.net.head.global_pool if self.framework == "timm" else self.backbone.pooler
        if module in pooling.modules() or isinstance(module, nn.Softmax) \
                or type(module).__name__ == "SwinRelativePositionBias":
            return "pass"
        return super().layer_kind(module)


def _cosine(q: torch.Tensor, k: torch.Tensor, logit_scale: torch.Tensor, mlp: nn.Module, coords: torch.Tensor,
            index: torch.Tensor):
    """Swin V2's cosine attention for q, k (B, heads, nW, w², d): q and k normalised, the scale
    exp(min(logit_scale, log 100)) per head (1, heads, 1, 1, 1), and the continuous position bias
    16·sigmoid(mlp(coords)) at each pair's relative offset ``index``, (1, heads, w², w²)."""
    heads, area = q.shape[1], q.shape[-2]
    scale = torch.clamp(logit_scale, max=math.log(1.0 / 0.01)).exp().view(1, heads, 1, 1, 1)
    table = mlp(coords).view(-1, heads)
    bias = 16 * torch.sigmoid(table[index.view(-1)].view(area, area, heads)).permute(2, 0, 1).unsqueeze(0)
    return F.normalize(q, dim=-1), F.normalize(k, dim=-1), scale, bias


def is_swin(net: nn.Module) -> str | None:
    """"timm" or "hf" for a Swin the adapter knows, else None."""
    package, name = type(net).__module__.split(".")[0], type(net).__name__
    if package == "timm" and name in TIMM_SWINS:
        return "timm"
    if package == "transformers" and name in HF_SWINS:
        return "hf"
    return None
