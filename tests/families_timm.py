"""timm's families beyond its plain ViT: EVA-02 and EVA (rotary embeddings, SwiGLU, q/v biases), DeiT III (layer
scale, no class-token position embedding), DINOv2 with registers and BEiT (relative position bias)."""
import timm

from families import Family, jittered
from families_builtin import timm_hooked_attentions

SMALL = dict(depth=3, embed_dim=64, num_heads=4, num_classes=5)
SMALL_64 = dict(SMALL, img_size=64, patch_size=8)      # an 8x8 grid of 8x8 patches
SMALL_56 = dict(SMALL, img_size=56)                    # a 4x4 grid of timm's 14x14 patches


def small(name, **kw):
    """A jittered builder of timm's ``name`` with ``kw``."""
    return jittered(lambda: timm.create_model(name, **kw))


def at_224(name, **kw):
    return lambda: timm.create_model(name, **kw).eval()


FAMILIES = [
    # EVA's, EVA-02's and BEiT's classifiers pool the average of the patch tokens
    Family("timm EVA-02 (eva02_*)",
           small("eva02_tiny_patch14_224", **SMALL_56, ref_feat_shape=(4, 4)), (56, 56),
           at_224("eva02_small_patch14_224", num_classes=1000), timm_hooked_attentions),
    # timm has EVA v1 at giant size only (1B parameters): its architecture at ViT-B size for the benchmark
    Family("timm EVA (eva_giant_*)", small("eva_giant_patch14_224", **SMALL_56, mlp_ratio=4),
           (56, 56), at_224("eva_giant_patch14_224", embed_dim=768, depth=12, num_heads=12, mlp_ratio=4),
           timm_hooked_attentions),
    Family("timm DeiT III (deit3_*)", small("deit3_small_patch16_224", **SMALL_64), (64, 64),
           at_224("deit3_small_patch16_224"), timm_hooked_attentions),
    Family("timm DINOv2 with registers (vit_*_reg4_dinov2)",
           small("vit_small_patch14_reg4_dinov2", **SMALL_56), (56, 56),
           at_224("vit_small_patch14_reg4_dinov2", img_size=224, num_classes=1000), timm_hooked_attentions),
    Family("timm BEiT (beit_*)", small("beit_base_patch16_224", **SMALL_64), (64, 64),
           at_224("beit_base_patch16_224"), timm_hooked_attentions),
]
