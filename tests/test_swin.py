"""Swin through the tap (timm v1 and v2, Hugging Face): logits, cleanup, the recorded windowed attention against
plain hooks, the window geometry against the frameworks' own partition, and raw-attention, rollout,
generic-attention and gradcam against their dense-matrix formulas."""
import json
import sys

import pytest
import torch
from safetensors.torch import save_file

import vitx
from families import jittered
from families_swin import FAMILIES, HF_SMALL
from reference import snapshot
from vitx.batch import Batch
from vitx.methods.relevance import unit_relevance
from vitx.model import as_model
from vitx.relevance import CHEFER
from vitx.registry import get_method, method_names
from vitx.windows import WindowGeometry, dense, spread

TIMM_V1, TIMM_V2, HF, HF_V2 = FAMILIES
SWIN_METHODS = ["raw-attention", "rollout", "generic-attention", "gradcam", "saliency", "integrated-gradients",
                "smoothgrad", "occlusion", "rise", "kernel-shap", "lrp", "attnlrp"]
QUICK = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 3}, "occlusion": {"window": 4, "stride": 4},
         "rise": {"masks": 32}, "kernel-shap": {"samples": 64}}


def images(seed=0, n=2):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def swin_blocks(net):
    layers = net.layers if hasattr(net, "layers") else (getattr(net, "swin", None) or net.swinv2).encoder.layers
    return [block for stage in layers for block in stage.blocks]


def hooked_attentions(net, x):
    """(logits, [A_b (B·nW, heads, w², w²)]) as the framework computes them, by plain hooks: timm's softmax output
    entering attn_drop (the explicit path, fused_attn off), Hugging Face's eager attention weights (Swinv2's
    with output_attentions)."""
    kept, handles, fused = [], [], {}
    for block in swin_blocks(net):
        if hasattr(block, "attn"):
            fused[block.attn] = getattr(block.attn, "fused_attn", None)
            block.attn.fused_attn = False
            handles.append(block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: kept.append(out)))
        else:
            attention = getattr(block.attention, "self", block.attention)
            handles.append(attention.register_forward_hook(lambda _m, _i, out: kept.append(out[1])))
    try:
        logits = net(x) if fused else net(pixel_values=x, output_attentions=True).logits
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in fused.items():
            if flag is None:
                del module.fused_attn
            else:
                module.fused_attn = flag
    return logits, kept


def windowed(attention, images):
    """(B·nW, heads, w², w²) -> (B, heads, nW, w², w²)."""
    return attention.unflatten(0, (images, -1)).transpose(1, 2)


def merging(parent, child):
    """The dense (h·w, H·W) patch merging P: each merged token's row holds 1/4 on its 2×2 children."""
    (h, w), (H, W) = parent, child
    P = torch.zeros(h * w, H * W)
    for r in range(H):
        for c in range(W):
            P[(r // 2) * w + c // 2, r * W + c] = 0.25
    return P


def dense_formulas(model, attentions, gradients):
    """raw-attention, rollout, generic-attention as mean rows of dense products: R = M_L ⋯ P ⋯ M_1 with
    M_b = rownorm(E_h A_b + I) (rollout) or I + E_h[(∇A_b ⊙ A_b)⁺] (generic), P the mergings, dense(A_b) each."""
    shapes = [model.adapter.windows(b) for b in range(len(attentions))]
    B = attentions[0].shape[0]
    rollout = generic = None
    for b, (a, g, shape) in enumerate(zip(attentions, gradients, shapes)):
        eye = torch.eye(shape.num_tokens)
        mixed = dense(a.mean(1), shape) + eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        chefer = eye + dense((g * a).clamp(min=0).mean(1), shape)
        if b == 0:
            rollout, generic = mixed, chefer
            continue
        if shape.grid != shapes[b - 1].grid:
            P = merging(shape.grid, shapes[b - 1].grid)
            rollout, generic = P @ rollout, P @ generic
        rollout, generic = mixed @ rollout, chefer @ generic
    last = shapes[-1]
    raw = dense(attentions[-1].mean(1), last).mean(1).view(B, *last.grid)
    first = shapes[0].grid
    return {"raw-attention": raw, "rollout": rollout.mean(1).view(B, *first),
            "generic-attention": generic.mean(1).view(B, *first)}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_tap_keeps_logits_and_leaves_nothing(family):
    net = family.build()
    model, x = as_model(net), images()
    before = snapshot(net)
    with torch.no_grad():
        expected = model(x)
        with vitx.trace(model) as tr:
            logits = model(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert snapshot(net) == before
    shapes = [model.adapter.windows(b) for b in range(len(tr.attentions))]
    for a, t, shape in zip(tr.attentions, tr.tokens, shapes):
        assert a.shape[2:] == (shape.num_windows, *[shape.window[0] * shape.window[1]] * 2)
        assert t.shape[:2] == (2, shape.num_tokens)
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    with pytest.raises(RuntimeError, match="inside"):
        with vitx.trace(model):
            raise RuntimeError("inside")
    assert snapshot(net) == before


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_recorded_attention_is_the_models(family):
    net = family.build()
    model, x = as_model(net), images(1)
    logits, expected = hooked_attentions(net, x)
    with vitx.trace(model) as tr:
        traced = model(x)
    torch.testing.assert_close(traced, logits, rtol=0, atol=1e-5)
    assert len(tr.attentions) == len(expected) == 4
    for a, e in zip(tr.attentions, expected):
        torch.testing.assert_close(a, windowed(e, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", [TIMM_V1, TIMM_V2, HF, HF_V2], ids=lambda f: f.name)
def test_window_geometry_is_the_frameworks_partition(family):
    """token_index names, per window position, the token that the framework's roll and window_partition put there."""
    net = family.build()
    model = as_model(net)
    for b, block in enumerate(swin_blocks(net)):
        shape = model.adapter.windows(b)
        (H, W), (wh, _), (sh, sw) = shape.grid, shape.window, shape.shift
        index = torch.arange(H * W, dtype=torch.float32).view(1, H, W, 1)
        rolled = torch.roll(index, shifts=(-sh, -sw), dims=(1, 2))
        partition = sys.modules[type(net).__module__].window_partition
        windows = partition(rolled, shape.window if hasattr(block, "attn") else wh)
        assert torch.equal(windows.reshape(shape.num_windows, -1).long(), shape.token_index())
    assert [model.adapter.windows(b).shift for b in range(4)] == [(0, 0), (2, 2), (0, 0), (2, 2)]


def test_dense_rows_and_spread():
    shape = WindowGeometry((4, 4), (2, 2), (1, 1))
    attention = torch.rand(3, shape.num_windows, 4, 4).softmax(-1)
    full = dense(attention, shape)
    torch.testing.assert_close(full.sum(-1), torch.ones(3, 16))            # a permuted block-diagonal stochastic matrix
    assert int((full > 0).sum()) == 3 * shape.num_windows * 16
    row = torch.rand(3, 4)
    torch.testing.assert_close(spread(row, (2, 2), (4, 4)), row @ merging((2, 2), (4, 4)))
    with pytest.raises(vitx.VitxError, match="not a whole number of 3x3 windows"):
        WindowGeometry((8, 8), (3, 3), (0, 0))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_attention_methods_equal_dense_formulas(family):
    net = family.build()
    model, x = as_model(net), images(2)
    logits, attentions = hooked_attentions(net, x)
    targets = logits.argmax(-1)
    gradients = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), attentions)
    expected = dense_formulas(model, [windowed(a.detach(), 2) for a in attentions],
                              [windowed(g, 2) for g in gradients])
    for method, maps in expected.items():
        got = vitx.explain(model, x, method=method, target=targets, normalize=False).token_maps
        torch.testing.assert_close(got, maps, rtol=1e-4, atol=1e-4 * float(maps.abs().max()))
    assert expected["rollout"].sum((1, 2)).sub(1).abs().max() < 1e-5        # rows of Â and P sum to one


def test_gradcam_on_the_last_feature_map():
    net = TIMM_V1.build()
    model, x = as_model(net), images(3)
    kept = []
    handle = swin_blocks(net)[-1].register_forward_hook(lambda _m, _i, out: kept.append(out))
    logits = net(x)
    handle.remove()
    targets = logits.argmax(-1)
    features, = kept                                                         # (B, 8, 8, C)
    gradient, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), features)
    expected = (gradient.mean((1, 2), keepdim=True) * features.detach()).sum(-1).clamp(min=0)
    got = vitx.explain(model, x, method="gradcam", target=targets, normalize=False).token_maps
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_method_maps_or_refuses_before_any_forward(family):
    model, x = as_model(family.build()), images(4)
    forwards = []
    handle = model.net.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        for method in method_names():
            forwards.clear()
            if method in SWIN_METHODS and not (family in (TIMM_V2, HF_V2) and method in ("lrp", "attnlrp")):
                exp = vitx.explain(model, x, method=method, **QUICK.get(method, {}))
                assert exp.maps.shape == (2, 64, 64) and torch.isfinite(exp.maps).all(), method
                assert not exp.degenerate.any(), method
            else:
                reason = "Swin V2's (continuous position bias|blocks are post-norm)" if method in SWIN_METHODS else \
                    "does not apply to 'swin' models: "
                with pytest.raises(vitx.VitxError, match=reason) as err:
                    vitx.explain(model, x, method=method)
                assert "\n" not in str(err.value) and not forwards, method
    finally:
        handle.remove()
    assert "swin" in get_method("gradcam").kinds


@pytest.mark.parametrize("call, message", [
    (lambda m, x: vitx.explain(m, x[..., :32, :32], method="rollout"), "this model takes 64x64 images, got 32x32"),
    (lambda m, x: vitx.explain(m, x, method="rollout", discard_ratio=0.5), "use discard_ratio=0 on Swin"),
    (lambda m, x: vitx.explain(m, x, method="kernel-shap", removal="attention"), "use removal='baseline'"),
    (lambda m, x: vitx.explain(m, x, method="gradcam", block=4), "choose a block in 0..3"),
    (lambda m, x: vitx.explain(m, x, method="partial-lrp"), "Swin has no class token"),
])
def test_bad_requests_refused_before_any_forward(call, message):
    net = TIMM_V1.build()
    model, x = as_model(net), images()
    forwards = []
    handle = net.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(vitx.VitxError, match=message) as err:
        call(model, x)
    handle.remove()
    assert not forwards and "\n" not in str(err.value)


def test_key_edits_refused_and_nothing_left():
    net = HF.build()
    model, x = as_model(net), images()
    before = snapshot(net)
    with pytest.raises(vitx.VitxError, match="attends within shifted windows"):
        with vitx.trace(model, key_scale=torch.ones(256)):
            model(x)
    assert snapshot(net) == before


def test_load_timm_swin_by_name(tmp_path):
    """timm's pretrained-loading path with a local weights file: the name's pretrained config gives the
    preprocessing, the adapter the Swin description."""
    source = TIMM_V1.build_224()
    save_file(source.state_dict(), str(tmp_path / "swin.safetensors"))
    model = vitx.load_model("timm:swin_tiny_patch4_window7_224", weights=tmp_path / "swin.safetensors")
    config = model.config
    assert (config.kind, config.patch_size, config.cls_index, config.num_prefix_tokens, config.pooling) == \
        ("swin", (4, 4), None, 0, "avg")
    assert model.layout(torch.zeros(1, 3, 224, 224)).grid == (56, 56)
    assert len(config.class_names) == 1000 and config.class_names[0].startswith("tench")
    assert [model.adapter.windows(b).grid for b in (0, 2, 4, 11)] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_load_hf_swin_directory(tmp_path):
    import transformers
    torch.manual_seed(0)
    config = transformers.SwinConfig(**HF_SMALL, id2label={i: f"shape {i}" for i in range(5)})
    source = transformers.SwinForImageClassification(config).eval()
    source.save_pretrained(tmp_path)
    # a processor that states its size and normalisation, as published checkpoints do
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 64, "width": 64}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    model = vitx.load_model(f"hf:{tmp_path}")
    assert model.config.kind == "swin" and model.config.class_names[4] == "shape 4"
    assert model.config.image_size == (64, 64) and model.config.mean == (0.5,) * 3
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(pixel_values=x).logits, rtol=0, atol=1e-5)
    exp = vitx.explain(model, x, method="generic-attention")
    assert exp.token_maps.shape == (2, 16, 16)


def unshifted(family):
    """The family with one block per stage (windows never shifted, so no shift mask) and no relative position
    bias: every relevance rule on it conserves."""
    from families_swin import TIMM_SMALL, hf_swin, timm_swin
    if family is HF:
        net = jittered(hf_swin(**{**HF_SMALL, "depths": [1, 1]}))()
    else:
        net = jittered(timm_swin("swin_tiny_patch4_window7_224", **{**TIMM_SMALL, "depths": (1, 1)}))()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "relative_position_bias_table" in name:
                p.zero_()
    return net


@pytest.mark.parametrize("family", [TIMM_V1, HF], ids=lambda f: f.name)
def test_chefer_rules_conserve_through_swin(family):
    """R = 1 at the target reaches every block's output whole and the pixels whole (Chefer et al.'s rules: αβ on
    the patch merging's reduction, the identity on its norm, normalised residual additions), once the windows'
    relative position bias, an additive term on the scores that takes its share, is zero."""
    model = as_model(unshifted(family))
    assert all(not any(model.adapter.windows(b).shift) for b in range(2))
    for seed in range(2):
        x = images(seed, 1)
        batch = Batch(model, x, model.layout(x), None)
        pixels = x.clone().requires_grad_(True)
        logits, tr = batch.run(pixels, original=True, rules=CHEFER)
        grads = torch.autograd.grad(unit_relevance(batch, logits), tr.tokens + [pixels])
        sums = [float((t.detach() * g).sum()) for t, g in zip(tr.tokens, grads)] + [float(grads[-1].sum())]
        assert sums == pytest.approx([1.0] * 3, rel=1e-3)
