"""timm's ViT family through the tap: vitx's ViT with the same weights gives the same logits and maps,
the maps equal formulas applied to attention captured by plain hooks, and timm's fused attention is
left on."""
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import ParallelScalingBlock
from torch import nn

import vitx
from vitx.layout import TokenLayout
from families_builtin import timm_hooked_attentions
from reference import VIT_METHODS, check_against_hooks, close, images, tiny_timm, trained_modules, vitx_twin

# timm name and architecture options shared by timm and vitx: plain ViT, DeiT distilled (CLS + distillation
# token), register tokens, and no class token with mean pooling.
VARIANTS = {
    "vit": ("vit_small_patch16_224", {}),
    "deit-distilled": ("deit_small_distilled_patch16_224", {}),
    "registers": ("vit_small_patch16_224", dict(reg_tokens=4, no_embed_class=True)),
    "no-cls": ("vit_small_patch16_224", dict(class_token=False, global_pool="avg")),
}
PREFIX = {"vit": 1, "deit-distilled": 2, "registers": 5, "no-cls": 0}
FAST = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 3}}
CLS_METHODS = [m["name"] for m in vitx.methods() if "cls_token" in m["needs"]]          # the class token itself
VITX_BLOCKS = {"evit", "diffmask", "x-pruner"}   # run vitx's own ViT blocks: timm's ViT is refused, with the way round
ROW_METHODS = [m["name"] for m in vitx.methods() if "head_row" in m["needs"] and "vit" in m["kinds"]]  # the head's row


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    """(variant, timm net, vitx model with timm's weights and the preprocessing timm gives them)."""
    name, kw = VARIANTS[request.param]
    timm_net = tiny_timm(name, **kw)
    config = vitx.load_model(timm_net).config
    ours = vitx.load_model(vitx_twin(timm_net, name, **kw), mean=config.mean, std=config.std)
    FAST.update(trained_modules(ours))   # random trained modules for these weights (timm's hold the same)
    return request.param, timm_net, ours


@pytest.fixture(scope="module")
def x():
    return images(2, 3, 64, 64)


def test_same_weights_same_logits_and_layout(pair, x):
    variant, timm_net, vitx_net = pair
    if variant == "deit-distilled":
        assert isinstance(timm_net, VisionTransformerDistilled)
    with torch.no_grad():
        torch.testing.assert_close(vitx_net(x), timm_net(x), rtol=0, atol=1e-4)
    timm_model, vitx_model = vitx.load_model(timm_net), vitx.load_model(vitx_net)
    assert timm_model.adapter.framework == "timm" and vitx_model.adapter.framework == "vitx"
    assert timm_model.layout(x) == vitx_model.layout(x)
    layout = timm_model.layout(x)
    assert layout.num_prefix == PREFIX[variant] and layout.grid == (8, 8) and layout.patch_size == (8, 8)
    assert layout.cls_index == (None if variant == "no-cls" else 0)


@pytest.mark.parametrize("method", VIT_METHODS)
def test_same_maps_for_every_method(pair, x, method):
    variant, timm_net, vitx_net = pair
    if variant == "no-cls" and method in CLS_METHODS:
        for net in (timm_net, vitx_net):
            with pytest.raises(vitx.VitxError, match="class token"):
                vitx.explain(net, x, method=method)
        return
    ours = vitx.explain(vitx_net, x, method=method, normalize=False, **FAST.get(method, {}))
    if method in VITX_BLOCKS:
        with pytest.raises(vitx.VitxError, match="runs the blocks of vitx's own ViT"):
            vitx.explain(timm_net, x, method=method, **FAST.get(method, {}))
        return
    theirs = vitx.explain(timm_net, x, method=method, normalize=False, **FAST.get(method, {}))
    assert torch.equal(ours.targets, theirs.targets)
    assert ours.maps.abs().max() > 0
    close(theirs.maps, ours.maps)


def test_fused_attention_stays_on(pair, x):
    _, timm_net, _ = pair
    attentions = [block.attn for block in timm_net.blocks]
    assert all(a.fused_attn is True for a in attentions)
    with vitx.trace(timm_net) as tr:
        timm_net(x)
        assert all(a.fused_attn is True for a in attentions)
    assert len(tr.attentions) == 3
    assert all(a.fused_attn is True for a in attentions)


# beyond VARIANTS: a hybrid ViT (a ResNet stem of stride 4 under 8x8 patches: 32x32 pixels a token on 128x128
# images) and BEiT (relative position bias in every attention, class-token head)
FORMULA_CASES = {**{v: (*VARIANTS[v], 64, 8) for v in ("vit", "deit-distilled", "registers")},
                 "hybrid": ("vit_tiny_r_s16_p8_224", dict(img_size=128), 128, 32),
                 "beit": ("beit_base_patch16_224", dict(global_pool="token", use_rel_pos_bias=True), 64, 8)}
PREFIX.update(hybrid=1, beit=1)


@pytest.mark.parametrize("variant", list(FORMULA_CASES))
def test_maps_match_hook_and_formula(variant):
    name, kw, size, patch = FORMULA_CASES[variant]
    net = tiny_timm(name, **kw)
    x = images(2, 3, size, size)
    grid = (size // patch, size // patch)
    assert vitx.load_model(net).layout(x) == TokenLayout(PREFIX[variant], (patch, patch), grid, 0)
    check_against_hooks(net, x, *timm_hooked_attentions(net, x), PREFIX[variant], grid)


def test_non_square_input_with_dynamic_size(x):
    """64x96 images on a timm model built with dynamic_img_size and on its vitx twin: an (8, 12) grid."""
    timm_net = tiny_timm(dynamic_img_size=True)
    vitx_net = vitx_twin(timm_net)
    wide = images(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(vitx_net(wide), timm_net(wide), rtol=0, atol=1e-4)
    for net in (timm_net, vitx_net):
        assert vitx.load_model(net).layout(wide).grid == (8, 12)
        exp = vitx.explain(net, wide, method="generic-attention")
        assert exp.maps.shape == (2, 64, 96) and exp.token_maps.shape == (2, 8, 12)


def test_fixed_size_model_refuses_other_sizes(x):
    net = tiny_timm()
    with pytest.raises(vitx.VitxError, match="64x96"):
        vitx.explain(net, images(1, 3, 64, 96), method="rollout")


def test_no_class_token():
    """Class-token methods refuse before any forward pass; the head-row methods read the mean of the patch rows;
    token and input gradients work."""
    net = tiny_timm(class_token=False, global_pool="avg")
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    x = images(2, 3, 64, 64)
    for method in CLS_METHODS:
        with pytest.raises(vitx.VitxError, match="class token"):
            vitx.explain(net, x, method=method)
    assert calls == []
    for method in ("gradcam", "saliency", "rollout", "generic-attention"):
        maps = vitx.explain(net, x, method=method, normalize=False).maps
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps.amax((1, 2)).gt(0).all()


def test_gated_and_normed_attention():
    """timm's optional attention output norm and sigmoid gate run in timm's order under the tap."""
    net = tiny_timm(scale_attn_norm=True)
    for block in net.blocks:
        block.attn.gate = nn.Linear(64, 64)
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        with vitx.trace(net):
            torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kw, message", [
    ("vit_small_patch16_224", dict(attn_layer="diff"), r"vit_small_patch16_224: block 0 has attention of type "
     r"timm.layers.diff_attention.DiffAttention, which the tap cannot inspect \(it knows timm's ViT and BEiT"),
    ("vit_small_patch16_18x2_224", {}, r"vit_small_patch16_18x2_224: its ParallelThingsBlock blocks run attention "
     r"branches and the MLP side by side \(parallel blocks\)"),
    ("vit_medium_patch16_gap_256", dict(block_fn=ParallelScalingBlock), r"its ParallelScalingBlock blocks"),
])
def test_unsupported_attention_is_refused(name, kw, message):
    with pytest.raises(vitx.VitxError, match=message):
        vitx.load_model(tiny_timm(name, **kw))


@pytest.mark.parametrize("name, kw, needs", [
    ("beit_base_patch16_224", dict(global_pool="token"),
     "its block type timm.models.beit.Block is not the pre-norm Block"),
    ("vit_tiny_r_s16_p8_224", {}, "embeds patches with a CNN backbone \\(Sequential\\); relevance rules know"),
])
def test_relevance_refused_where_rules_do_not_reach(name, kw, needs):
    net = tiny_timm(name, **kw)
    for method in ("lrp", "transformer-attribution"):
        with pytest.raises(vitx.VitxError, match=f"timm model {name}[: ].*{needs}"):
            vitx.explain(net, images(1, 3, 64, 64), method=method)


@pytest.mark.parametrize("name, pool", [("vit_small_patch16_224", "avg"), ("vit_small_patch16_224", "map"),
                                        ("beit_base_patch16_224", "avg")])
def test_class_token_the_head_does_not_read(name, pool):
    """A class token the head never reads: the methods that need it refuse, naming the pooling, before any forward
    pass; the head-row methods read the mean of the patch rows of an 'avg' head and refuse the attention pooling of
    a 'map' head."""
    net = tiny_timm(name, global_pool=pool)
    model = vitx.load_model(net)
    assert model.config.pooling == pool and model.config.cls_index == 0
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    x = images(2, 3, 64, 64)
    refused = CLS_METHODS + (ROW_METHODS if pool == "map" else [])
    for method in refused:
        with pytest.raises(vitx.VitxError, match=f"method '{method}' .*this model's head reads '{pool}'-pooled tokens"):
            vitx.explain(model, x, method=method)
    assert calls == []
    for method in ["grad-sam"] + (ROW_METHODS[:3] if pool == "avg" else []):
        maps = vitx.explain(model, x, method=method).maps
        assert torch.isfinite(maps).all() and maps.amax((1, 2)).gt(0).all()


