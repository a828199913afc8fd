"""Families vitx read before issue 21: its own ViT, timm's ViT/DeiT/hybrid/NesT and Hugging Face's ViT/DeiT; and vitx's
HVT (issue 17)."""
import copy

from families import Family, jittered
from reference import HF_SMALL, TIMM_SMALL, VITX_SMALL, manual_forward


def timm_hooked_attentions(net, x):
    """Logits and per-block attention probabilities of a copy of a timm ViT-like ``net`` on timm's unfused path,
    captured by forward hooks on each block's ``attn.attn_drop`` (still on the autograd graph)."""
    net = copy.deepcopy(net)
    captured = []
    for block in net.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda module, inputs, output: captured.append(output))
    return net(x), captured


def hf_output_attentions(net, x):
    """Logits and attention probabilities as transformers reports them, from an eager copy of ``net``."""
    net = copy.deepcopy(net)
    net.set_attn_implementation("eager")
    out = net(pixel_values=x, output_attentions=True)
    return out.logits, list(out.attentions)


def vitx_attentions(net, x):
    logits, attentions, _, _ = manual_forward(net, x)
    return logits, attentions


def _timm(name, **kw):
    return lambda: __import__("timm").create_model(name, **kw)


def _vitx(name, **kw):
    from vitx.models import create_model
    return lambda: create_model(name, **kw)


def _hf(model_class, config_class, **kw):
    def build():
        import transformers
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**kw))
    return build


def _timm_nest():
    from timm.models.nest import Nest
    return Nest(**NEST)


HYBRID = dict(img_size=128, depth=3, embed_dim=64, num_heads=4, num_classes=5)
NEST = dict(img_size=64, patch_size=4, embed_dims=(32, 48, 64), num_heads=(2, 3, 4), depths=(1, 1, 1), num_classes=5)

FAMILIES = [
    Family("vitx ViT", jittered(_vitx("vit_small_patch16_224", **VITX_SMALL)), (64, 64),
           _vitx("vit_base_patch16_224"), vitx_attentions),
    Family("timm ViT (vit_*)", jittered(_timm("vit_small_patch16_224", **TIMM_SMALL)), (64, 64),
           _timm("vit_base_patch16_224"), timm_hooked_attentions),
    Family("timm DeiT distilled (deit_*_distilled)", jittered(_timm("deit_small_distilled_patch16_224", **TIMM_SMALL)),
           (64, 64), _timm("deit_base_distilled_patch16_224"), timm_hooked_attentions),
    Family("timm ViT with registers (reg_tokens)",
           jittered(_timm("vit_small_patch16_224", reg_tokens=4, no_embed_class=True, **TIMM_SMALL)), (64, 64),
           _timm("vit_base_patch16_224", reg_tokens=4, no_embed_class=True), timm_hooked_attentions),
    Family("timm hybrid ViT (vit_*_r*, ResNet stem)", jittered(_timm("vit_tiny_r_s16_p8_224", **HYBRID)), (128, 128),
           _timm("vit_small_r26_s32_224"), timm_hooked_attentions),
    Family("vitx NesT", jittered(_vitx("nest_shapes", image_size=64, num_classes=5)), (64, 64), _vitx("nest_tiny")),
    Family("timm NesT (nest_*)", jittered(_timm_nest), (64, 64), _timm("nest_tiny")),
    Family("vitx HVT (max pooling between stages)", jittered(_vitx("hvt_shapes", embed_dim=64, num_classes=5)), (64, 64),
           _vitx("hvt_shapes", image_size=224, patch_size=16)),
    Family("Hugging Face ViT (ViTForImageClassification)",
           jittered(_hf("ViTForImageClassification", "ViTConfig", **HF_SMALL, attn_implementation="sdpa")), (64, 64),
           _hf("ViTForImageClassification", "ViTConfig"), hf_output_attentions),
    Family("Hugging Face DeiT (DeiTForImageClassificationWithTeacher)",
           jittered(_hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **HF_SMALL, attn_implementation="sdpa")),
           (64, 64), _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig"), hf_output_attentions),
]
