"""Shared by the framework tests: tiny timm / Hugging Face / vitx ViTs with the same random weights, and
the attention methods' formulas written out here, independently of vitx's tap and methods."""
import atexit
import copy
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

import vitx

from vitx.checkpoint import fingerprint, save_checkpoint
from vitx.models import ARCHITECTURES, VisionTransformer, create_model
from vitx.models.shapley import ShapleyExplainer
from vitx.pruning.blocks import default_stages
from vitx.pruning.diffmask import STRETCH, TEMPERATURE, DiffMask
from vitx.pruning.dynamicvit import DynamicViT
from vitx.pruning.evit import EViT
from vitx.pruning.iared2 import IARed2
from vitx.pruning.slimming import Slimmed
from vitx.pruning.xpruner import ClassMasks, XPrunerTwin, layer_plan, prune
from vitx.registry import get_method, method_names

# Methods that read parts only their own architecture has (ViT-NeT's tree, eX-ViT's AttE, the concept head), refused
# elsewhere: each with the zoo model it explains.
OWN_ARCHITECTURE = {"vit-net": "shapes-vit-net", "ex-vit": "shapes-vit-exvit",
                    "concept-transformer": "shapes-vit-concepts"}
VIT_METHODS = [name for name in method_names() if "vit" in get_method(name).kinds and name not in OWN_ARCHITECTURE]

# A small config of timm's and vitx's "vit_small_patch16_224": 64x64 images, an 8x8 grid of 8x8 patches.
TIMM_SMALL = dict(img_size=64, patch_size=8, depth=3, embed_dim=64, num_heads=4, num_classes=5)
VITX_SMALL = dict(image_size=64, patch_size=8, depth=3, embed_dim=64, num_heads=4, num_classes=5)
HF_SMALL = dict(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=128, num_labels=5)


def jitter(net, seed=0, scale=0.2):
    """Perturb every weight so that attention, gradients and classes differ from the near-uniform random
    init; returns ``net`` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return net.eval()


def tiny_timm(name="vit_small_patch16_224", **kw):
    import timm
    torch.manual_seed(0)
    return jitter(timm.create_model(name, **{**TIMM_SMALL, **kw}))


def vitx_twin(timm_net, name="vit_small_patch16_224", **kw):
    """vitx's ViT of the same configuration, with ``timm_net``'s weights."""
    net = create_model(name, **{**VITX_SMALL, **kw})
    net.load_state_dict(timm_net.state_dict())
    return net.eval()


def tiny_hf(cls_name="ViTForImageClassification", attn_implementation="eager"):
    import transformers
    config_cls = transformers.DeiTConfig if cls_name.startswith("DeiT") else transformers.ViTConfig
    torch.manual_seed(0)
    config = config_cls(**HF_SMALL, attn_implementation=attn_implementation)
    return jitter(getattr(transformers, cls_name)(config))


def hf_twin(timm_net):
    """Hugging Face's ViTForImageClassification with ``timm_net``'s weights (a plain timm ViT, its shape read off
    it): timm's fused qkv split into q/k/v projections, its LayerNorm epsilon."""
    import transformers
    width = timm_net.embed_dim
    config = transformers.ViTConfig(image_size=timm_net.patch_embed.img_size[0], hidden_size=width,
                                    patch_size=timm_net.patch_embed.patch_size[0], intermediate_size=4 * width,
                                    num_hidden_layers=len(timm_net.blocks), num_labels=timm_net.num_classes,
                                    num_attention_heads=timm_net.blocks[0].attn.num_heads,
                                    layer_norm_eps=1e-6, attn_implementation="eager")
    net = transformers.ViTForImageClassification(config)
    theirs = timm_net.state_dict()
    ours = {"vit.embeddings.cls_token": theirs["cls_token"], "vit.embeddings.position_embeddings": theirs["pos_embed"],
            "vit.layernorm.weight": theirs["norm.weight"], "vit.layernorm.bias": theirs["norm.bias"],
            "classifier.weight": theirs["head.weight"], "classifier.bias": theirs["head.bias"]}
    for p in ("weight", "bias"):
        ours[f"vit.embeddings.patch_embeddings.projection.{p}"] = theirs[f"patch_embed.proj.{p}"]
        for i in range(config.num_hidden_layers):
            hf, tm = f"vit.layers.{i}", f"blocks.{i}"
            for name, value in zip("qkv", theirs[f"{tm}.attn.qkv.{p}"].chunk(3)):
                ours[f"{hf}.attention.{name}_proj.{p}"] = value
            for hf_name, tm_name in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                                     ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                ours[f"{hf}.{hf_name}.{p}"] = theirs[f"{tm}.{tm_name}.{p}"]
    net.load_state_dict(ours)
    return net.eval()


def images(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def target_score(logits):
    """Sum of each image's predicted-class logit."""
    return logits.gather(1, logits.argmax(1, keepdim=True)).sum()


def embed(net, x):
    """The tokens entering the first block of vitx's ViT: class token and patch projections, plus position
    embeddings."""
    tokens = net.patch_embed(x).flatten(2).transpose(1, 2)
    return torch.cat([net.cls_token.expand(len(x), -1, -1), tokens], 1) + net.pos_embed


def manual_forward(net, x, key_scale=None):
    """vitx's ViT forward written out from its modules' weights, without the tap, the pre-softmax scores of
    key k multiplied by key_scale[:, k] (B, N) if given: logits, and per block its attention, input tokens
    and output tokens."""
    tokens = embed(net, x)
    attentions, inputs, outputs = [], [], []
    for blk in net.blocks:
        inputs.append(tokens)
        B, N, D = tokens.shape
        heads = blk.attn.num_heads
        q, k, v = blk.attn.qkv(blk.norm1(tokens)).view(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (D // heads) ** -0.5
        if key_scale is not None:
            scores = scores * key_scale[:, None, None, :]
        attention = scores.softmax(-1)
        attentions.append(attention)
        tokens = tokens + blk.attn.proj((attention @ v).transpose(1, 2).reshape(B, N, D))
        tokens = tokens + blk.mlp(blk.norm2(tokens))
        outputs.append(tokens)
    return net.head(net.norm(tokens)[:, 0]), attentions, inputs, outputs


def formula_maps(attentions, gradients, num_prefix, grid, pooling="cls"):
    """raw-attention, rollout, generic-attention and attention-gradcam computed by their formulas from
    per-block attention probabilities A (B, heads, N, N) and dy/dA; {method: (B, gh, gw)}. Each map is the head's
    row over the patch columns: the class token's (token 0), or for a mean-pooled head (``pooling="avg"``) the
    mean of the patch tokens' rows."""
    B, _, N, _ = attentions[0].shape
    eye = torch.eye(N).expand(B, N, N)
    rollout = eye
    for a in attentions:                                    # R <- rownorm(mean_h A + I) R
        mixed = a.mean(1) + torch.eye(N)
        rollout = mixed / mixed.sum(-1, keepdim=True) @ rollout
    generic = eye
    for a, g in zip(attentions, gradients):                 # R <- R + mean_h((dA * A)^+) R
        generic = generic + (g * a).clamp(min=0).mean(1) @ generic

    def row(matrix):                                        # (..., N, N) -> (..., patches)
        return matrix[..., num_prefix:, num_prefix:].mean(-2) if pooling == "avg" else matrix[..., 0, num_prefix:]
    a, g = row(attentions[-1]), row(gradients[-1])
    maps = {"raw-attention": row(attentions[-1].mean(1)), "rollout": row(rollout), "generic-attention": row(generic),
            "attention-gradcam": (g.mean(-1, keepdim=True) * a).mean(1).clamp(min=0)}
    return {method: m.reshape(B, *grid) for method, m in maps.items()}


def check_against_hooks(net, x, logits, attentions, num_prefix, grid, pooling="cls"):
    """The tap on ``net`` gives ``logits`` and records ``attentions`` (both made by plain hooks on input ``x``) and
    their gradients, and raw-attention, rollout, generic-attention and attention-gradcam equal :func:`formula_maps`
    of them."""
    import vitx
    gradients = torch.autograd.grad(target_score(logits), attentions, retain_graph=True)
    with vitx.trace(net) as tr:
        traced = net(x)
    close(traced, logits.detach(), rtol=1e-5)
    for ours, theirs in zip(tr.attentions + tr.gradients(target_score(traced)), attentions + list(gradients)):
        close(ours.detach(), theirs.detach())
    check_formulas(net, x, logits, attentions, num_prefix, grid, pooling)


def check_formulas(net, x, logits, attentions, num_prefix, grid, pooling="cls"):
    """raw-attention, rollout, generic-attention and attention-gradcam of ``net`` on ``x`` equal
    :func:`formula_maps` of ``attentions`` (made on ``x`` without vitx, with their ``logits``) and their gradients."""
    import vitx
    gradients = torch.autograd.grad(target_score(logits), attentions)
    expected = formula_maps([a.detach() for a in attentions], gradients, num_prefix, grid, pooling)
    for method, reference in expected.items():
        assert reference.abs().max() > 0
        close(vitx.explain(net, x, method=method, normalize=False).token_maps, reference)


def snapshot(net):
    """Whatever the tap could leave behind: per submodule its mode, hooks, instance attributes (a patched
    ``forward`` lands there) and timm's fused-attention flag; and the Hugging Face attention setting."""
    modules = {name: (m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
                      sorted(m.__dict__), getattr(m, "fused_attn", None)) for name, m in net.named_modules()}
    return modules, getattr(getattr(net, "config", None), "_attn_implementation", None)


def close(actual, expected, rtol=1e-4):
    """Elementwise closeness relative to the largest expected value."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def tiny_explainer(model) -> str:
    """A jittered random ViT Shapley explainer and its surrogate (2 blocks, 32 dimensions) for ``model``'s
    input size, patch size, classes and normalisation, saved in a temporary directory; the explainer's path."""
    c = model.config
    config = dict(image_size=c.image_size[0], patch_size=c.patch_size[0], embed_dim=32, depth=2, num_heads=2,
                  num_classes=c.num_classes)
    meta = {"arch": "vit_small_patch16_224", "config": config, "mean": c.mean, "std": c.std,
            "class_names": c.class_names}
    directory = Path(tempfile.mkdtemp(prefix="vitx-explainer-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    cfg = replace(ARCHITECTURES["vit_small_patch16_224"], **config)
    torch.manual_seed(0)
    save_checkpoint(jitter(VisionTransformer(cfg)), directory / "surrogate.safetensors", meta)
    explainer = {**meta, "kind": "shapley-explainer", "explains": c.name, "surrogate": "surrogate",
                 "extra_blocks": 1, "mlp_layers": 3, "fingerprints": [fingerprint(model.net)]}
    return str(save_checkpoint(jitter(ShapleyExplainer(cfg), seed=1), directory / "explainer.safetensors", explainer))


def tiny_twin(model, kind: str) -> str:
    """A pruned twin of metadata ``kind`` ("dynamicvit", "evit", "iared2" or "slimming") for ``model`` (vitx's own
    ViT): its very weights, DynamicViT's prediction modules or IA-RED²'s interpreters jittered random ones, ρ = 0.7
    (IA-RED² has no ratio: interpreters before blocks 0, D/3, 2D/3; Patch Slimming's masks keep the first
    P − lP/(2D) patches in block l and the class token alone in the last), saved in a temporary directory; the
    file's path."""
    c, cfg = model.config, model.net.cfg
    stages, ratio = default_stages(cfg.depth), 0.7
    if kind == "slimming":
        patches = model.net.grid_size[0] * model.net.grid_size[1]
        stages = [list(range(patches - l * patches // (2 * cfg.depth))) for l in range(cfg.depth - 1)] + [[]]
        net, ratio = Slimmed(model.net, stages), None
    elif kind == "iared2":
        stages, ratio = tuple(sorted({0, cfg.depth // 3, 2 * cfg.depth // 3})), None
        net = IARed2(model.net, stages)
        jitter(net.interpreters, seed=3)
    elif kind == "dynamicvit":
        net = DynamicViT(model.net, stages, ratio)
        jitter(net.predictors, seed=2)
    else:
        net = EViT(model.net, stages, ratio)
    meta = {"kind": kind, "arch": "vit_small_patch16_224", "config": cfg.to_dict(), "stages": list(stages),
            "ratio": ratio, "mean": c.mean, "std": c.std, "class_names": c.class_names, "explains": c.name,
            "fingerprints": [fingerprint(model.net)]}
    directory = Path(tempfile.mkdtemp(prefix="vitx-twin-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(save_checkpoint(net, directory / f"{kind}.safetensors", meta))


def tiny_gates(model) -> str:
    """Jittered random Vision DiffMask gates for ``model`` (vitx's own ViT), saved in a temporary directory; their
    file's path."""
    c, cfg = model.config, model.net.cfg
    meta = {"kind": "diffmask", "dim": cfg.embed_dim, "depth": cfg.depth, "temperature": TEMPERATURE,
            "stretch": list(STRETCH), "mean": c.mean, "std": c.std, "class_names": c.class_names, "explains": c.name,
            "fingerprints": [fingerprint(model.net)]}
    directory = Path(tempfile.mkdtemp(prefix="vitx-diffmask-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    torch.manual_seed(0)
    return str(save_checkpoint(jitter(DiffMask(cfg.embed_dim, cfg.depth), seed=4), directory / "gates.safetensors",
                               meta))


def tiny_xpruner(model) -> str:
    """Jittered random X-Pruner class masks for ``model`` (vitx's own ViT) and the twin they prune to at 70% of its
    FLOPs, saved in a temporary directory; the file's path."""
    c, cfg = model.config, model.net.cfg
    masks = jitter(ClassMasks.like(model.net), seed=5, scale=2.0)
    plan = layer_plan(model.net, masks, 0.7)
    meta = {"kind": "xpruner", "arch": "vit_small_patch16_224", "config": cfg.to_dict(), "attn": plan["attn"],
            "mlp": plan["mlp"], "flops_target": 0.7, "mean": c.mean, "std": c.std, "class_names": c.class_names,
            "explains": c.name, "fingerprints": [fingerprint(model.net)]}
    directory = Path(tempfile.mkdtemp(prefix="vitx-xpruner-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    twin = XPrunerTwin(prune(copy.deepcopy(model.net), plan), masks)
    return str(save_checkpoint(twin, directory / "xpruner.safetensors", meta))


def posing_as(net, model):
    """``net`` loaded under ``model``'s name, normalisation and classes: a model a trained module's checks must
    refuse by its weights or shape alone."""
    c = model.config
    return vitx.load_model(net, name=c.name, mean=c.mean, std=c.std, class_names=c.class_names)


def trained_modules(model) -> dict[str, dict]:
    """Per method that needs a trained module, the parameters that hand it a random one made for ``model`` (IA-RED²'s
    only for a model with a class token: it needs one, and the method refuses the others before looking)."""
    modules = {"vit-shapley": {"explainer": tiny_explainer(model)},
               "dynamicvit": {"module": tiny_twin(model, "dynamicvit")},
               "evit-finetuned": {"module": tiny_twin(model, "evit")},
               "diffmask": {"module": tiny_gates(model)}, "x-pruner": {"module": tiny_xpruner(model)}}
    if model.net.cls_token is not None:
        modules["ia-red2"] = {"module": tiny_twin(model, "iared2")}
        modules["patch-slimming"] = {"module": tiny_twin(model, "slimming")}
    return modules
