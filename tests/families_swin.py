"""Swin families: timm's SwinTransformer (v1) and SwinTransformerV2, Hugging Face's SwinForImageClassification and
Swinv2ForImageClassification.
Their attention is windowed and their head mean-pools, so the class-token formulas do not apply
(``attentions=None``); tests/test_swin.py checks the dense-matrix formulas instead."""
from families import Family, jittered

# 64 px, patch 4: a 16x16 then an 8x8 token map, windows of 4x4 (shifted by 2 in every second block)
TIMM_SMALL = dict(img_size=64, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                  num_classes=5)
HF_SMALL = dict(image_size=64, patch_size=4, window_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                num_labels=5)


def timm_swin(name: str, **kw):
    def make():
        import timm
        return timm.create_model(name, **kw).eval()
    return make


def hf_swin(attn_implementation: str = "eager", version: str = "", **kw):
    """A Hugging Face Swin (``version=""``) or Swinv2 (``"v2"``) classifier of config ``kw``."""
    def make():
        import transformers
        config = getattr(transformers, f"Swin{version}Config")(**kw)
        config._attn_implementation = attn_implementation
        return getattr(transformers, f"Swin{version}ForImageClassification")(config).eval()
    return make


FAMILIES = [
    Family("timm Swin v1 (swin_tiny_patch4_window7_224)", jittered(timm_swin("swin_tiny_patch4_window7_224",
                                                                             **TIMM_SMALL)),
           (64, 64), timm_swin("swin_tiny_patch4_window7_224")),
    Family("timm Swin v2 (swinv2_tiny_window8_256)", jittered(timm_swin("swinv2_tiny_window8_256", **TIMM_SMALL)),
           (64, 64), timm_swin("swinv2_tiny_window8_256", img_size=224, window_size=7)),
    Family("Hugging Face Swin (SwinForImageClassification)", jittered(hf_swin(**HF_SMALL)), (64, 64),
           hf_swin(attn_implementation="sdpa")),
    Family("Hugging Face Swin v2 (Swinv2ForImageClassification)", jittered(hf_swin(version="v2", **HF_SMALL)),
           (64, 64), hf_swin(version="v2")),
]
