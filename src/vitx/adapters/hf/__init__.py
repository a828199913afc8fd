"""Adapters for Hugging Face vision transformers, one module per family: ViT and DeiT, BEiT and
data2vec-vision, DINOv2 (with registers), and the vision towers of CLIP and SigLIP, as image classifiers or
bare towers; the image-text models CLIP and SigLIP (:mod:`.two_towers`); and the region-feature VQA models
VisualBERT and LXMERT (:mod:`.regions`). Hugging Face Swin has its own adapter (:mod:`vitx.adapters.swin`)."""
from __future__ import annotations

from torch import nn

from ...errors import VitxError
from ..base import Adapter
from ..swin import HF_SWINS
from .beit import HFBeitAdapter, HFData2VecVisionAdapter
from .clip import HFClipAdapter, HFSiglipAdapter
from .common import HFAdapter
from .detr import HFDetrAdapter
from .dinov2 import HFDinov2Adapter
from .loading import load
from .lxmert import HFLxmertAdapter
from .preprocessing import image_processing
from .two_towers import IMAGE_TEXT
from .visualbert import HFVisualBertAdapter
from .vit import HFViTAdapter

ADAPTERS = {"ViTForImageClassification": HFViTAdapter, "DeiTForImageClassification": HFViTAdapter,
            "DeiTForImageClassificationWithTeacher": HFViTAdapter,
            "BeitForImageClassification": HFBeitAdapter,
            "Data2VecVisionForImageClassification": HFData2VecVisionAdapter,
            **dict.fromkeys(("Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification",
                             *HFDinov2Adapter.towers), HFDinov2Adapter),
            **dict.fromkeys(("CLIPForImageClassification", *HFClipAdapter.towers), HFClipAdapter),
            **dict.fromkeys(("SiglipForImageClassification", *HFSiglipAdapter.towers), HFSiglipAdapter),
            **IMAGE_TEXT,
            "VisualBertForQuestionAnswering": HFVisualBertAdapter, "LxmertForQuestionAnswering": HFLxmertAdapter,
            "DetrForObjectDetection": HFDetrAdapter}


def hf_adapter(net: nn.Module) -> Adapter:
    """The adapter of a Hugging Face model class (or a subclass of one) that vitx reads."""
    name = next((cls.__name__ for cls in type(net).__mro__ if cls.__name__ in ADAPTERS), None)
    if name is None:
        raise VitxError(f"Hugging Face model {type(net).__name__} is not one the tap can inspect: it reads "
                        f"{', '.join((*ADAPTERS, *HF_SWINS))}")
    return ADAPTERS[name](net)


__all__ = ["HFAdapter", "HFViTAdapter", "hf_adapter", "image_processing", "load"]
