"""Pick the adapter for a model; the frameworks themselves are imported only when their model is used."""
from __future__ import annotations

from torch import nn

from ..errors import VitxError
from .base import Adapter, Description

SUPPORTED = ("supported are vitx's own models; timm's ViTs (DeiT, DINOv2, registers, hybrid), BEiT, EVA, rope ViTs, "
             "NesT, Swin v1/v2; torchvision's vit_*; Hugging Face ViT, DeiT, BEiT, data2vec-vision, DINOv2, Swin, "
             "CLIP and SigLIP (towers or whole), VisualBERT, LXMERT, DETR; open_clip's ViT CLIP (docs/models.md)")
LOOKED_FOR = {"timm": "timm's Nest, SwinTransformer(V2), or a model with `blocks` of one attention each and a "
                      "`patch_embed` (timm's ViT layout)",
              "torchvision": "torchvision.models.VisionTransformer (its encoder.layers of MultiheadAttention)"}


def adapter_for(net: nn.Module) -> Adapter:
    from ..models.hvt import HVT
    from ..models.nest import Nest
    from ..models.vit import VisionTransformer
    from ..models.clip import CLIP
    from ..models.detr import DETR
    from ..models.vqa import VQATransformer
    from .swin import SwinAdapter, is_swin
    package = type(net).__module__.split(".")[0]
    if framework := is_swin(net):
        return SwinAdapter(net, framework)
    if isinstance(net, HVT):
        from .hvt import HVTAdapter
        return HVTAdapter(net)
    if isinstance(net, VisionTransformer):
        from .vitx import VitxViTAdapter
        return VitxViTAdapter(net)
    if isinstance(net, VQATransformer):
        from .vitx import VitxVQAAdapter
        return VitxVQAAdapter(net)
    if isinstance(net, CLIP):
        from .vitx import VitxCLIPAdapter
        return VitxCLIPAdapter(net)
    if isinstance(net, DETR):
        from .vitx import VitxDETRAdapter
        return VitxDETRAdapter(net)
    if isinstance(net, Nest) or package == "timm" and type(net).__name__ == "Nest":
        from .nest import NestAdapter
        return NestAdapter(net, "vitx" if isinstance(net, Nest) else "timm")
    if package == "timm" and hasattr(net, "blocks") and hasattr(net, "patch_embed"):
        from .timm import TimmViTAdapter
        return TimmViTAdapter(net)
    if package == "torchvision" and type(net).__name__ == "VisionTransformer":
        from .torchvision import TorchvisionViTAdapter
        return TorchvisionViTAdapter(net)
    if package == "open_clip":
        from .open_clip import OpenClipAdapter
        return OpenClipAdapter(net)
    if package == "transformers":
        from .hf import hf_adapter
        return hf_adapter(net)
    looked_for = LOOKED_FOR.get(package, "a model of vitx, timm, torchvision, transformers or open_clip")
    raise VitxError(f"vitx cannot inspect a {type(net).__module__}.{type(net).__name__}: it looked for {looked_for}; "
                    f"{SUPPORTED}")


__all__ = ["Adapter", "Description", "adapter_for"]
