"""Hugging Face's other vision families (issue 21): BEiT, data2vec-vision, DINOv2 (with registers) and the
vision towers of CLIP and SigLIP under their image classifiers. Small builds: 64 px, 8-px patches, 3 layers of
width 64 with 4 heads, 5 labels, eager attention (so that ``output_attentions`` reports it). The 224-px builds
keep each config's defaults, BEiT's and data2vec's with the relative position bias their published
checkpoints use."""
from __future__ import annotations

from functools import partial

from torch import nn

from families import Family, jittered
from families_builtin import hf_output_attentions
from reference import HF_SMALL

VISION = {k: v for k, v in HF_SMALL.items() if k != "num_labels"}   # the labels go on the classifier's config
DINO = {**{k: v for k, v in VISION.items() if k != "intermediate_size"}, "mlp_ratio": 2}
CONFIGS = {   # model class -> (its config class, the small build's settings)
    "BeitForImageClassification": ("BeitConfig", dict(VISION, use_relative_position_bias=True)),
    "Data2VecVisionForImageClassification": ("Data2VecVisionConfig", dict(VISION, use_relative_position_bias=True)),
    "Dinov2ForImageClassification": ("Dinov2Config", DINO),
    "Dinov2WithRegistersForImageClassification": ("Dinov2WithRegistersConfig", dict(DINO, num_register_tokens=4)),
    "CLIPForImageClassification": ("CLIPConfig", {"vision_config": VISION}),
    "SiglipForImageClassification": ("SiglipConfig", {"vision_config": VISION}),
    "Dinov2Model": ("Dinov2Config", DINO),
    "Dinov2WithRegistersModel": ("Dinov2WithRegistersConfig", dict(DINO, num_register_tokens=4)),
    "CLIPVisionModel": ("CLIPVisionConfig", VISION),
    "SiglipVisionModel": ("SiglipVisionConfig", VISION),
}
TOWERS = ("Dinov2Model", "Dinov2WithRegistersModel", "CLIPVisionModel", "SiglipVisionModel")


def hf_model(cls_name: str, implementation: str = "eager", small: bool = True, **settings) -> nn.Module:
    """``cls_name`` with random weights, its small config (or the config's defaults at 224 px) updated with
    ``settings``, and ``implementation`` as its attention; 5 labels for a small classifier."""
    import transformers
    config_name, small_settings = CONFIGS[cls_name]
    labels = {} if cls_name in TOWERS or not small else {"num_labels": 5}
    config = getattr(transformers, config_name)(**{**(small_settings if small else {}), **labels, **settings},
                                               attn_implementation=implementation)
    return getattr(transformers, cls_name)(config).eval()


def _family(name: str, cls_name: str, head_row: bool = True, **settings) -> Family:
    """A catalog entry; ``head_row``: the head reads the class token or the mean of the patch tokens, so the
    attention methods' formulas apply (not DINOv2's concatenation of both)."""
    bias = {"use_relative_position_bias": True} if "Beit" in cls_name or "Data2Vec" in cls_name else {}
    return Family(name, jittered(partial(hf_model, cls_name, **settings)), (64, 64),
                  partial(hf_model, cls_name, small=False, **bias, **settings),
                  hf_output_attentions if head_row else None)


FAMILIES = [
    _family("Hugging Face BEiT, mean-pooled head (BeitForImageClassification)", "BeitForImageClassification"),
    _family("Hugging Face BEiT, class-token head (BeitForImageClassification, use_mean_pooling=False)",
            "BeitForImageClassification", use_mean_pooling=False),
    _family("Hugging Face data2vec-vision (Data2VecVisionForImageClassification)",
            "Data2VecVisionForImageClassification"),
    _family("Hugging Face DINOv2 (Dinov2ForImageClassification)", "Dinov2ForImageClassification", head_row=False),
    _family("Hugging Face DINOv2 with registers (Dinov2WithRegistersForImageClassification)",
            "Dinov2WithRegistersForImageClassification", head_row=False),
    _family("Hugging Face CLIP vision tower (CLIPForImageClassification)", "CLIPForImageClassification"),
    _family("Hugging Face SigLIP vision tower (SiglipForImageClassification)", "SiglipForImageClassification"),
]
