"""Correctness of the explanation methods: hand-computed cases, formulas on a tiny ViT, captum as oracle,
and batch invariance of every registered method."""
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

import vitx
from vitx.batch import Batch
from vitx.methods.attention import discard_lowest, generic_relevance, rollout_matrix
from vitx.methods.gradient import integrated_gradients_attributions, saliency_attributions
from vitx.models import ViTConfig, VisionTransformer

from reference import VIT_METHODS, manual_forward, trained_modules

# Cheap settings for the sampling methods; every other method runs with its defaults (those that need a trained
# module with a tiny random one for the model, added by the model fixture).
LIGHT = {"integrated-gradients": {"steps": 8}, "smoothgrad": {"samples": 4}, "rise": {"masks": 64},
         "kernel-shap": {"samples": 64}}


@pytest.fixture(scope="module")
def model():
    """A 3-block, 2-head ViT on 32x32 images (4x4 patches grid), weights jittered away from the
    near-linear random init so that gradients and attention differ between tokens and classes."""
    torch.manual_seed(0)
    net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                      num_classes=5))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model = vitx.load_model(net.eval())
    LIGHT.update(trained_modules(model))
    return model


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(model, x):
    """Targets, attentions, their gradients and each block's (input tokens, gradient) from manual_forward, the
    gradients of the predicted logits' sum."""
    logits, attentions, inputs, _ = manual_forward(model.net, x)
    assert torch.allclose(logits, model(x), atol=1e-5)
    targets = logits.argmax(1)
    gradients = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), attentions + inputs)
    depth = len(attentions)
    return (targets, [a.detach() for a in attentions], list(gradients[:depth]),
            list(zip([t.detach() for t in inputs], gradients[depth:])))


def token_map(model, x, method, **params):
    return vitx.explain(model, x, method=method, normalize=False, **params).token_maps


def close(actual, expected, rtol=1e-4):
    """Elementwise closeness relative to the largest expected value."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


# --- hand-built attention matrices -------------------------------------------------------------------

A1 = [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
A2 = [[0.6, 0.2, 0.2], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]


def test_rollout_two_blocks_by_hand():
    # Â = (A + I) / 2 here since each row of A sums to 1; R = Â2 Â1.
    #   Â1 = [[.75,.15,.1],[.05,.9,.05],[.1,.1,.8]]   Â2 = [[.8,.1,.1],[.125,.75,.125],[.05,.05,.9]]
    expected = [[0.615, 0.22, 0.165], [0.14375, 0.70625, 0.15], [0.13, 0.1425, 0.7275]]
    attentions = [torch.tensor(a)[None, None] for a in (A1, A2)]
    close(rollout_matrix(attentions)[0], expected, rtol=1e-6)
    # start_layer=1 keeps only block 2: R = Â2.
    close(rollout_matrix(attentions, start_layer=1)[0], [[0.8, 0.1, 0.1], [0.125, 0.75, 0.125], [0.05, 0.05, 0.9]])


def test_rollout_head_fusion_and_discard_by_hand():
    heads = torch.tensor([[[0.05, 0.55, 0.4], [0.3, 0.6, 0.1], [0.25, 0.15, 0.6]],
                          [[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [0.0, 0.5, 0.5]]])[None]
    close(rollout_matrix([heads], head_fusion="max")[0],
          np.array([[1.5, 0.55, 0.4], [0.3, 1.6, 0.7], [0.25, 0.5, 1.6]]) / [[2.45], [2.6], [2.35]])
    close(rollout_matrix([heads], head_fusion="min")[0],
          np.array([[1.05, 0.25, 0.25], [0.1, 1.2, 0.1], [0.0, 0.15, 1.5]]) / [[1.55], [1.4], [1.65]])
    # int(9 * 0.34) = 3 entries dropped: the three smallest after the protected class-token self-attention
    # 0.05 (the smallest of all): 0.1, 0.15 and 0.25.
    head = heads[:, :1]
    close(discard_lowest(head[:, 0], 0.34, keep=0)[0], [[0.05, 0.55, 0.4], [0.3, 0.6, 0.0], [0.0, 0.0, 0.6]])
    # int(9 * 0.12) = 1 entry to drop, 0.1, and the other 0.1 tied with it goes too.
    tied = torch.tensor([[[0.2, 0.4, 0.4], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]])
    close(discard_lowest(tied, 0.12, keep=0)[0], [[0.2, 0.4, 0.4], [0.0, 0.8, 0.0], [0.3, 0.3, 0.4]])
    close(rollout_matrix([head], discard_ratio=0.34)[0],
          np.array([[1.05, 0.55, 0.4], [0.3, 1.6, 0.0], [0.0, 0.0, 1.6]]) / [[2.0], [1.9], [1.6]])


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.95])
def test_rollout_rows_sum_to_one(head_fusion, discard_ratio):
    torch.manual_seed(0)
    attentions = [torch.randn(2, 3, 10, 10).mul(3).softmax(-1) for _ in range(4)]
    for start_layer in (0, 3):
        result = rollout_matrix(attentions, head_fusion, discard_ratio, start_layer)
        assert result.shape == (2, 10, 10) and (result >= 0).all()
        close(result.sum(-1), torch.ones(2, 10), rtol=1e-6)


def test_generic_attention_two_blocks_by_hand():
    """Chefer et al. 2021 on N=3 tokens, two heads, two blocks, worked out on paper."""
    a1 = torch.tensor([A1, [[0.2, 0.4, 0.4], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]])
    g1 = torch.tensor([[[1., 2, -1], [0, 1, 0], [-2, 1, 1]], [[2., -1, 1], [1, 1, -1], [0, 2, 2]]])
    a2 = torch.tensor([A2, [[0.4, 0.4, 0.2], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]]])
    g2 = torch.tensor([[[1., 1, 1], [0, 0, 0], [1, -1, 0]], [[-1., 1, 2], [1, 0, 1], [0, 0, 0]]])
    # Block 1: (∇A ⊙ A)⁺ per head = [[.5,.6,0],[0,.8,0],[0,.2,.6]] and [[.4,0,.4],[.3,.3,0],[0,.5,.5]];
    #   Ā1 = their mean = [[.45,.3,.2],[.15,.55,0],[0,.35,.55]];  R1 = I + Ā1 I.
    r1 = [[1.45, 0.3, 0.2], [0.15, 1.55, 0.0], [0.0, 0.35, 1.55]]
    close(generic_relevance([a1[None]], [g1[None]])[0], r1, rtol=1e-6)
    # Block 2: (∇A ⊙ A)⁺ = [[.6,.2,.2],[0,0,0],[.1,0,0]] and [[0,.4,.4],[.2,0,.6],[0,0,0]];
    #   Ā2 = [[.3,.3,.3],[.1,0,.3],[.05,0,0]];  Ā2 R1 = [[.48,.66,.525],[.145,.135,.485],[.0725,.015,.01]].
    r2 = [[1.93, 0.96, 0.725], [0.295, 1.685, 0.485], [0.0725, 0.365, 1.56]]
    result = generic_relevance([a1[None], a2[None]], [g1[None], g2[None]])[0]
    close(result, r2, rtol=1e-6)
    # The same, step by step in numpy.
    relevance = np.eye(3)
    for a, g in ((a1, g1), (a2, g2)):
        relevance = relevance + np.clip(a.numpy() * g.numpy(), 0, None).mean(0) @ relevance
    close(result, relevance, rtol=1e-6)


# --- the methods on a tiny ViT, against formulas computed from a forward without the tap -----------

def cls_patches(matrix):
    """(B, N, N) or (B, heads, N) class-token row over the 16 patches -> (B, 4, 4)."""
    return matrix[:, 0, 1:].reshape(-1, 4, 4)


@pytest.mark.parametrize("block", [-1, 0])
def test_raw_attention(model, x, reference, block):
    _, attentions, _, _ = reference
    close(token_map(model, x, "raw-attention", block=block), cls_patches(attentions[block].mean(1)))


@pytest.mark.parametrize("params", [{}, {"head_fusion": "max", "discard_ratio": 0.5}, {"start_layer": 1}])
def test_rollout_on_model(model, x, reference, params):
    _, attentions, _, _ = reference
    fuse = {"mean": torch.mean, "max": torch.amax}[params.get("head_fusion", "mean")]
    result = torch.eye(17)
    for attention in attentions[params.get("start_layer", 0):]:
        fused = fuse(attention, 1)
        if "discard_ratio" in params:  # zero the int(17*17*0.5) smallest entries, except [0, 0]
            flat = fused.flatten(1)
            order = flat.clone().index_fill(1, torch.tensor([0]), float("inf")).argsort(1)
            fused = flat.scatter(1, order[:, :144], 0.0).view_as(fused)
        fused = fused + torch.eye(17)
        result = fused / fused.sum(-1, keepdim=True) @ result
    close(token_map(model, x, "rollout", **params), cls_patches(result))


def test_generic_attention_on_model(model, x, reference):
    _, attentions, gradients, _ = reference
    relevance = torch.eye(17)
    for a, g in zip(attentions, gradients):
        relevance = relevance + (a * g).clamp(min=0).mean(1) @ relevance
    close(token_map(model, x, "generic-attention"), cls_patches(relevance))


def test_attention_gradcam(model, x, reference):
    _, attentions, gradients, _ = reference
    weights = gradients[-1][:, :, 0, 1:].mean(-1, keepdim=True)          # (B, heads, 1)
    expected = (weights * attentions[-1][:, :, 0, 1:]).mean(1).clamp(min=0).reshape(-1, 4, 4)
    assert expected.gt(0).sum() > 8  # not all cut by the ReLU
    close(token_map(model, x, "attention-gradcam"), expected)


@pytest.mark.parametrize("block", [-1, 1])
def test_gradcam(model, x, reference, block):
    _, _, _, inputs = reference
    tokens, gradient = (t[:, 1:] for t in inputs[block])
    expected = (gradient.mean(1, keepdim=True) * tokens).sum(-1).clamp(min=0).reshape(-1, 4, 4)
    close(token_map(model, x, "gradcam", block=block), expected)


def test_methods_explain_the_predicted_class_by_default(model, x, reference):
    targets = reference[0]
    for name in VIT_METHODS:
        assert vitx.explain(model, x[:2], method=name, **LIGHT.get(name, {})).targets.tolist() == targets[:2].tolist()


# --- input-gradient methods ------------------------------------------------------------------------

def batch_of(model, x, targets):
    return Batch(model, x, model.layout(x), targets)


def test_integrated_gradients_completeness(model, x):
    """Σ IG = f(x) − f(x') within 1% (Sundararajan et al.'s completeness axiom)."""
    black = model.normalize(torch.zeros_like(x))
    with torch.no_grad():
        gaps = model(x) - model(black)
    targets = gaps.abs().argmax(1)  # a sizeable gap for each image, so that 1% of it is a strict test
    gap = gaps.gather(1, targets[:, None])[:, 0]
    assert gap.abs().min() > 0.5
    for steps in (64, 128):  # this jittered model's path is steep: 16 steps still miss by 10%
        total = integrated_gradients_attributions(batch_of(model, x, targets), steps=steps).sum((1, 2, 3))
        assert ((total - gap).abs() <= 0.01 * gap.abs()).all(), (steps, total, gap)
    # The public map is the channel sum, so its total is the same; a grey baseline changes the gap.
    maps = vitx.explain(model, x, "integrated-gradients", targets, normalize=False, steps=64).maps
    close(maps.sum((1, 2)), gap, rtol=1e-2)
    grey = model.normalize(torch.full_like(x, 0.5))
    with torch.no_grad():
        gap = (model(x) - model(grey)).gather(1, targets[:, None])[:, 0]
    assert gap.abs().min() > 0.1
    total = integrated_gradients_attributions(batch_of(model, x, targets), steps=64, baseline=0.5).sum((1, 2, 3))
    assert ((total - gap).abs() <= 0.01 * gap.abs()).all()


def test_saliency_matches_captum(model, x):
    targets = torch.tensor([1, 3, 0])
    expected = Saliency(model).attribute(x.clone().requires_grad_(), target=targets, abs=True)
    close(saliency_attributions(batch_of(model, x, targets)), expected, rtol=1e-5)
    close(vitx.explain(model, x, "saliency", targets, normalize=False).maps, expected.amax(1), rtol=1e-5)


@pytest.mark.parametrize("baseline", ["black", "zeros"])
def test_integrated_gradients_matches_captum(model, x, baseline):
    targets = torch.tensor([4, 1, 2])
    start = torch.zeros_like(x) if baseline == "zeros" else model.normalize(torch.zeros_like(x))
    expected = IntegratedGradients(model).attribute(x, baselines=start, target=targets, n_steps=20,
                                                    method="gausslegendre")
    batch = batch_of(model, x, targets)
    close(integrated_gradients_attributions(batch, steps=20, baseline=baseline, internal_batch_size=7), expected,
          rtol=1e-5)


def test_smoothgrad_is_the_mean_noisy_gradient(model, x):
    """With no noise SmoothGrad is saliency; with noise it depends on the seed only."""
    targets = torch.tensor([2, 2, 2])
    saliency = Saliency(model).attribute(x.clone().requires_grad_(), target=targets, abs=True).amax(1)
    plain = vitx.explain(model, x, "smoothgrad", targets, normalize=False, samples=3, noise_level=0.0).maps
    close(plain, saliency, rtol=1e-5)
    noisy = [vitx.explain(model, x, "smoothgrad", targets, normalize=False, samples=3, seed=s).maps for s in (0, 0, 1)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.allclose(noisy[0], noisy[2])


# --- batching --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VIT_METHODS)
def test_batch_gives_the_maps_of_single_images(model, x, name):
    """Explaining three images at once equals explaining each alone (predicted and explicit targets)."""
    params = LIGHT.get(name, {})
    for target in (None, [3, 0, 4]):
        together = vitx.explain(model, x, name, target, normalize=False, **params)
        alone = [vitx.explain(model, x[i:i + 1], name, None if target is None else target[i], normalize=False,
                              **params) for i in range(len(x))]
        close(together.maps, torch.cat([e.maps for e in alone]))
        assert together.targets.tolist() == [int(e.targets) for e in alone]
        assert together.maps.flatten(1).std(1).gt(0).any(), "constant maps test nothing"


def test_unknown_block_is_a_vitx_error(model, x):
    for name, block in (("raw-attention", 3), ("attention-gradcam", -4), ("gradcam", 0)):
        with pytest.raises(vitx.VitxError, match="block"):
            vitx.explain(model, x, name, block=block)
    with pytest.raises(vitx.VitxError, match="head_fusion"):
        vitx.explain(model, x, "rollout", head_fusion="median")
    with pytest.raises(vitx.VitxError, match="discard_ratio"):
        vitx.explain(model, x, "rollout", discard_ratio=1.0)
