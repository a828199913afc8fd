"""Pick the adapter for a model; the frameworks themselves are imported only when their model is used."""
from __future__ import annotations

from torch import nn

from ..errors import VitxError
from .base import Adapter, Description

HF_SWIN = ("swin", "swinv2")   # Hugging Face Swin: adapters/swin.py


def adapter_for(net: nn.Module) -> Adapter:
    from ..models.nest import Nest
    from ..models.vit import VisionTransformer
    from .swin import SwinAdapter, is_swin
    package = type(net).__module__.split(".")[0]
    if framework := is_swin(net):
        return SwinAdapter(net, framework)
    if isinstance(net, VisionTransformer):
        from .vitx import VitxViTAdapter
        return VitxViTAdapter(net)
    if isinstance(net, Nest) or package == "timm" and type(net).__name__ == "Nest":
        from .nest import NestAdapter
        return NestAdapter(net, "vitx" if isinstance(net, Nest) else "timm")
    if package == "timm" and hasattr(net, "blocks") and hasattr(net, "patch_embed"):
        from .timm import TimmViTAdapter
        return TimmViTAdapter(net)
    if package == "torchvision" and type(net).__name__ == "VisionTransformer":
        from .torchvision import TorchvisionViTAdapter
        return TorchvisionViTAdapter(net)
    if package == "transformers" and getattr(getattr(net, "config", None), "model_type", "") not in HF_SWIN:
        from .hf import hf_adapter
        return hf_adapter(net)
    raise VitxError(f"vitx cannot inspect a {type(net).__module__}.{type(net).__name__}: supported are vitx's "
                    "ViT and NesT, timm's VisionTransformer (DeiT, DeiT III, DINOv2, hybrid)/BEiT/EVA/NesT/Swin (v1, "
                    "v2), torchvision's VisionTransformer and Hugging Face ViT, DeiT, BEiT, data2vec-vision, DINOv2, "
                    "Swin (v1, v2) and CLIP/SigLIP vision models")


__all__ = ["Adapter", "Description", "adapter_for"]
