"""Architectures vitx owns, by timm's names, with timm-compatible state_dict keys."""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..data.shapes import CLASS_NAMES
from ..data.shapes_captions import MAX_LENGTH as CAPTION_LENGTH, TOKENIZER as CAPTION_TOKENIZER
from ..data.shapes_vqa import ANSWERS, MAX_LENGTH, TOKENIZER
from ..errors import VitxError
from ..data.concepts import GLOBAL_CONCEPTS, SPATIAL_CONCEPTS
from .clip import CLIP, CLIPConfig
from .concepts import ConceptViT, ConceptViTConfig
from .detr import DETR, DETRConfig
from .exvit import ExViT, ExViTConfig
from .hvt import HVT, HVTConfig
from .nest import Nest, NestConfig
from .vit import ViTConfig, VisionTransformer
from .vitnet import ViTNeT, ViTNeTConfig
from .vqa import VQAConfig, VQATransformer

_VIT = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}

ARCHITECTURES: dict[str, ViTConfig | NestConfig | VQAConfig | DETRConfig | CLIPConfig | HVTConfig] = {}
for _size, _dims in _VIT.items():
    for _patch in (16, 32):
        ARCHITECTURES[f"vit_{_size}_patch{_patch}_224"] = ViTConfig(patch_size=_patch, **_dims)
    if _size != "large":
        ARCHITECTURES[f"deit_{_size}_patch16_224"] = ViTConfig(**_dims)
        ARCHITECTURES[f"deit_{_size}_distilled_patch16_224"] = ViTConfig(distilled=True, **_dims)
# vitx's own small ViT for the shapes data (64x64 images, 8x8 patches), with early convolutions:
# the plain patch projection needed many times more steps to learn shapes from scratch on this CPU.
ARCHITECTURES["vitx_shapes"] = ViTConfig(image_size=64, patch_size=8, embed_dim=96, depth=6, stem="conv",
                                         num_heads=4, num_classes=8)
# ViT-NeT (Kim et al., ICML 2022): vitx_shapes with a neural tree decoder of depth 3 (8 leaves, 7 prototypes) as head.
ARCHITECTURES["vitnet_shapes"] = ViTNeTConfig(**ARCHITECTURES["vitx_shapes"].to_dict(), tree_depth=3)
# eX-ViT (Yu et al. 2022) on vitx_shapes' body: E-MHA in the last block, AttE with 2 attributes as the head (4 segmented
# worse: docs/inherent.md).
ARCHITECTURES["exvit_shapes"] = ExViTConfig(image_size=64, patch_size=8, embed_dim=96, depth=6, stem="conv",
                                            num_heads=4, num_classes=8, attributes=2)
# vitx_shapes with a Concept Transformer head (Rigotti et al., ICLR 2022) over vitx.data.concepts' shapes concepts
ARCHITECTURES["vitx_shapes_concepts"] = ConceptViTConfig(**ARCHITECTURES["vitx_shapes"].to_dict(),
                                                         global_concepts=GLOBAL_CONCEPTS,
                                                         spatial_concepts=SPATIAL_CONCEPTS)


# NesT (Zhang et al., AAAI 2022) by timm's names, and a small one for the shapes data: 64x64 images in 4x4
# patches, 16 blocks of 4x4 patches at level 0; about the parameter count of vitx_shapes.
ARCHITECTURES["nest_tiny"] = NestConfig(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 8))
ARCHITECTURES["nest_small"] = NestConfig(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 20))
ARCHITECTURES["nest_base"] = NestConfig(embed_dims=(128, 256, 512), num_heads=(4, 8, 16), depths=(2, 2, 20))
ARCHITECTURES["nest_shapes"] = NestConfig(image_size=64, patch_size=4, embed_dims=(64, 96, 128), num_heads=(2, 3, 4),
                                          depths=(2, 2, 2), num_classes=8)
# HVT (Pan et al., ICCV 2021) at vitx_shapes' size (conv stem, 8x8 patches, 96 dims, 4 heads, MLP 4): 6 blocks in
# 3 stages of 64, 31 and 15 tokens, 1-D max pooling between stages; about 40% fewer FLOPs than vitx_shapes.
ARCHITECTURES["hvt_shapes"] = HVTConfig(depths=(2, 2, 2))

# vitx's VQA transformers for shapes_vqa: the image side is vitx_shapes' (so they can start from shapes-vit),
# the vocabulary and answers are vitx.data.shapes_vqa's.
_SHAPES_VQA = dict(vocabulary=TOKENIZER.tokens, answers=ANSWERS, max_length=MAX_LENGTH)
ARCHITECTURES["vqa_shapes_single"] = VQAConfig(streams="single", depth=6, **_SHAPES_VQA)
ARCHITECTURES["vqa_shapes_dual"] = VQAConfig(streams="dual", text_layers=2, image_layers=6, cross_layers=2,
                                             **_SHAPES_VQA)

# vitx's DETR-like detector for the multi-object shapes data: vitx_shapes' image side as its encoder (so it can
# start from shapes-vit-multi), 3 decoder layers and 8 object queries (the images hold 2 or 3 objects).
ARCHITECTURES["detr_shapes"] = DETRConfig(classes=CLASS_NAMES, encoder_layers=6, decoder_layers=3, queries=8)

# vitx's image-text model for the shapes captions: vitx_shapes as its image tower (so it can start from shapes-vit),
# 3 text blocks over vitx.data.shapes_captions' word vocabulary, 64-dimensional joint embeddings.
ARCHITECTURES["clip_shapes"] = CLIPConfig(vocabulary=CAPTION_TOKENIZER.tokens, max_length=CAPTION_LENGTH,
                                          image_layers=6, text_layers=3, proj_dim=64)


def create_model(arch: str, **overrides) -> nn.Module:
    """Build architecture ``arch`` (a name from ARCHITECTURES), with config fields overridden."""
    if arch not in ARCHITECTURES:
        raise VitxError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}  # from JSON metadata
    try:
        cfg = replace(ARCHITECTURES[arch], **overrides)
    except (TypeError, ValueError) as err:
        raise VitxError(f"bad configuration for {arch!r}: {err}") from None
    builders = {NestConfig: Nest, VQAConfig: VQATransformer, DETRConfig: DETR, CLIPConfig: CLIP, ViTConfig: VisionTransformer,
                HVTConfig: HVT, ViTNeTConfig: ViTNeT, ExViTConfig: ExViT, ConceptViTConfig: ConceptViT}
    return builders[type(cfg)](cfg)


__all__ = ["ARCHITECTURES", "ExViT", "ExViTConfig", "HVT", "HVTConfig", "Nest", "NestConfig", "ViTConfig",
           "VisionTransformer", "VQAConfig", "VQATransformer", "ViTNeT", "ViTNeTConfig",
           "create_model"]
