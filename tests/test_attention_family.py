"""attention-flow, grad-sam, beyond-intuition-head, beyond-intuition-token and atman: hand-computed cases,
networkx as the max-flow oracle, and the methods on a tiny ViT against their formulas computed from a forward
written out here, without the tap; the tap's projected values and block inputs on vitx's, timm's and Hugging
Face's ViT (batch invariance of every registered method is in test_methods.py)."""
import contextlib

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitx
from reference import close as close_tensors, embed, hf_twin, images, jitter, manual_forward, snapshot, tiny_timm, vitx_twin
from vitx.layout import TokenLayout
from vitx.methods.attention import accumulate, grad_sam_scores, head_weighted_attentions, token_weighted_attentions
from vitx.methods.flow import layered_max_flows
from vitx.methods.perturbation import suppression_scales
from vitx.models import ViTConfig, VisionTransformer

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)


@pytest.fixture(scope="module")
def model():
    """3 blocks, 2 heads, a 4x4 patch grid and a class token: N = 17 tokens."""
    torch.manual_seed(0)
    return vitx.load_model(jitter(VisionTransformer(ViTConfig(**TINY))))


@pytest.fixture(scope="module")
def x():
    return images(3, 3, 32, 32)


@pytest.fixture(scope="module")
def reference(model, x):
    """Targets (predicted classes), attentions and d(sum of target logits)/dA from manual_forward."""
    logits, attentions, _, _ = manual_forward(model.net, x)
    assert torch.allclose(logits, model(x), atol=1e-5)
    targets = logits.argmax(1)
    gradients = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), attentions)
    return targets, [a.detach() for a in attentions], list(gradients)


def close(actual, expected, rtol=1e-4):
    """reference.close, with the expected values given as a tensor, an array or nested lists."""
    close_tensors(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol)


def token_map(model, x, method, **params):
    return vitx.explain(model, x, method=method, normalize=False, **params).token_maps


def patches(matrix):
    """(B, N, N) class-token row, or (B, N) scores, over the 16 patches -> (B, 4, 4)."""
    return (matrix[:, 0, 1:] if matrix.dim() == 3 else matrix[:, 1:]).reshape(-1, 4, 4)


# --- attention-flow ----------------------------------------------------------------------------------

def networkx_flows(mixed, source):
    """Max flow from (K, source) to every (0, j) in the layered graph of ``mixed`` (K, N, N), by networkx."""
    K, N, _ = mixed.shape
    graph = nx.DiGraph()
    graph.add_nodes_from((b, i) for b in range(K + 1) for i in range(N))
    for b in range(K):
        for i in range(N):
            for k in range(N):
                if mixed[b][i, k] > 0:
                    graph.add_edge((b + 1, i), (b, k), capacity=float(mixed[b][i, k]))
    return np.array([nx.maximum_flow_value(graph, (K, source), (0, j)) for j in range(N)])


def test_flow_through_one_middle_layer_by_hand():
    # Each path source -> (1, i) -> (0, j) has its own middle node: flow_j = sum_i min(top[i], bottom[i, j]).
    top = [[0.5, 0.3, 0.2], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]          # rows other than the source's unused
    bottom = [[0.6, 0.4, 0.0], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]
    mixed = np.array([bottom, top])
    np.testing.assert_allclose(layered_max_flows(mixed, 0, range(3)), [0.8, 0.7, 0.5], atol=1e-6)
    # Rollout ranks the tokens otherwise: (top[0] @ bottom) = [0.38, 0.28, 0.34].
    np.testing.assert_allclose(np.array(top[0]) @ np.array(bottom), [0.38, 0.28, 0.34])
    np.testing.assert_allclose(layered_max_flows(mixed, 2, range(3)), [0.1, 0.1, 0.8], atol=1e-6)


def test_flow_bottleneck_two_layers_down_by_hand():
    # Source (3, 0) sends 0.5 to each of a0, a1 (layer 2); a0 -> b0 (1.0); a1 -> b0, b1 (0.5 each);
    # b0 -> (0, 0), (0, 1) (0.5 each); b1 -> (0, 1) (1.0). Into (0, 0) only b0's 0.5 edge leads;
    # (0, 1) gets 0.5 through a0 -> b0 and 0.5 through a1 -> b1. Rollout would give [0.375, 0.625].
    mixed = np.array([[[0.5, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.3, 0.7]]])
    np.testing.assert_allclose(layered_max_flows(mixed, 0, [0, 1]), [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(layered_max_flows(mixed[:1], 1, [0, 1]), [0.0, 1.0], atol=1e-6)  # one block


@pytest.mark.parametrize("seed", range(6))
def test_flow_equals_networkx_on_random_layered_graphs(seed):
    rng = np.random.default_rng(seed)
    K, N = 1 + seed % 4, 3 + seed
    mixed = rng.random((K, N, N)) * (rng.random((K, N, N)) < 0.6)                # sparse, rows summing to 1
    mixed = mixed / np.maximum(mixed.sum(-1, keepdims=True), 1e-12)
    source = int(rng.integers(N))
    expected = networkx_flows(mixed, source)
    assert np.ptp(expected) > 0.05
    np.testing.assert_allclose(layered_max_flows(mixed, source, range(N)), expected, rtol=0, atol=1e-6)
    # A tolerance far below one integer solve's resolution takes further solves on the residual graph.
    np.testing.assert_allclose(layered_max_flows(mixed, source, range(N), tolerance=1e-12), expected, rtol=0, atol=1e-9)


def residual_mixed(attentions, fuse=torch.mean):
    """Â_b = norm_rows(fuse_h(A_b) + I), stacked (B, K, N, N) in float64."""
    mixed = [fuse(a, 1) + torch.eye(a.shape[-1]) for a in attentions]
    return torch.stack([m / m.sum(-1, keepdim=True) for m in mixed], 1).double()


@pytest.mark.parametrize("params", [{}, {"start_layer": 1, "head_fusion": "max"}])
def test_attention_flow_on_model_equals_networkx(model, x, reference, params):
    _, attentions, _ = reference
    fuse = torch.amax if params.get("head_fusion") == "max" else torch.mean
    mixed = residual_mixed(attentions[params.get("start_layer", 0):], fuse)
    expected = torch.tensor(np.stack([networkx_flows(m.numpy(), 0) for m in mixed]), dtype=torch.float32)
    assert patches(expected).flatten(1).std(1).min() > 0.01
    close(token_map(model, x, "attention-flow", **params), patches(expected), rtol=1e-5)


# --- grad-sam --------------------------------------------------------------------------------------

def test_grad_sam_by_hand():
    a = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]],
                      [[0.2, 0.4, 0.4], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]])[None]
    g = torch.tensor([[[1., 2, -1], [0, 1, 0], [-2, 1, 1]], [[2., -1, 1], [1, 1, -1], [0, 2, 2]]])[None]
    # A ⊙ ReLU(∇A): head 1 [[.5,.6,0],[0,.8,0],[0,.2,.6]], head 2 [[.4,0,.4],[.3,.3,0],[0,.5,.5]];
    # column sums [.5,1.6,.6] + [.7,.8,.9] = [1.2,2.4,1.5], over L·H·N = 1·2·3 = 6.
    close(grad_sam_scores([a], [g])[0], [0.2, 0.4, 0.25], rtol=1e-6)
    # A second block with zero gradient halves every score (the mean over blocks).
    close(grad_sam_scores([a, a], [g, -g.abs()])[0], [0.1, 0.2, 0.125], rtol=1e-6)


def test_grad_sam_on_model(model, x, reference):
    _, attentions, gradients = reference
    expected = sum((a * g.clamp(min=0)).mean((1, 2)) for a, g in zip(attentions, gradients)) / len(attentions)
    close(token_map(model, x, "grad-sam"), patches(expected))


# --- beyond-intuition-head -------------------------------------------------------------------------

def test_head_wise_perception_by_hand():
    a = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.4, 0.6]]])[None]
    g = torch.tensor([[[1., 0], [0, 1]], [[0., 2], [-1, 0]]])[None]
    # Head 1: Aᵀ∇A = Aᵀ = [[.5,.2],[.5,.8]], mean |.| = 0.5. Head 2: Aᵀ∇A = [[-.4,2],[-.6,0]], mean |.| = 0.75.
    # Weights 0.4 and 0.6: Ā = .4 A1 + .6 A2 = [[.8,.2],[.32,.68]]; P = I + Ā.
    weighted, = head_weighted_attentions([a], [g])
    close(weighted[0], [[0.8, 0.2], [0.32, 0.68]], rtol=1e-6)
    close(accumulate([weighted])[0], [[1.8, 0.2], [0.32, 1.68]], rtol=1e-6)
    # start_layer drops the blocks before it: only the second (here: the same block with head 2's gradient 0).
    second, = head_weighted_attentions([a, a], [g, g * torch.tensor([1., 0])[None, :, None, None]], start_layer=1)
    close(second[0], a[0, 0], rtol=1e-6)


@pytest.mark.parametrize("start_layer", [0, 2])
def test_beyond_intuition_head_on_model(model, x, reference, start_layer):
    targets, attentions, gradients = reference
    perception = torch.eye(17).expand(3, 17, 17)
    for a, g in zip(attentions[start_layer:], gradients[start_layer:]):
        importance = torch.stack([(a[:, h].transpose(-1, -2) @ g[:, h]).abs().mean((-1, -2)) for h in range(2)], 1)
        weights = importance / importance.sum(1, keepdim=True)
        perception = perception + (weights[:, :, None, None] * a).sum(1) @ perception
    expected = patches(integrated_feedback(model, x, targets, steps=5) * perception)
    assert expected.flatten(1).gt(0).sum(1).min() > 4
    close(token_map(model, x, "beyond-intuition-head", steps=5, start_layer=start_layer, internal_batch_size=7),
          expected)


def integrated_feedback(model, x, targets, steps):
    """E_h[(1/steps Σ_α ∇A_L(α x))⁺] over α = 0, 1/(steps − 1), ..., 1: integrated gradients of the last attention."""
    total = 0
    for alpha in np.linspace(0, 1, steps):
        logits, path_attentions, _, _ = manual_forward(model.net, x * float(alpha))
        total = total + torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), path_attentions[-1])[0]
    return (total / steps).clamp(min=0).mean(1)


# --- beyond-intuition-token ------------------------------------------------------------------------

def test_token_wise_perception_by_hand():
    a = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.4, 0.6]]])[None]     # E_h A = [[.75,.25],[.3,.7]]
    values = torch.tensor([[[3.0, 4.0], [0.0, -1.0]]])                                 # norms 5 and 1
    inputs = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])                                  # norms 2 and 1
    # Key token 0's column scaled by 5/2, token 1's by 1/1: Ā = [[1.875,.25],[.75,.7]]; P = I + Ā.
    weighted, = token_weighted_attentions([a], [values], [inputs])
    close(weighted[0], [[1.875, 0.25], [0.75, 0.7]], rtol=1e-6)
    close(accumulate([weighted])[0], [[2.875, 0.25], [0.75, 1.7]], rtol=1e-6)
    # start_layer drops the blocks before it: here the second block, whose values are all of norm 1.
    second, = token_weighted_attentions([a, a], [values, values / values.norm(dim=-1, keepdim=True)],
                                        [inputs, torch.ones(1, 2, 2) / 2 ** 0.5], start_layer=1)
    close(second[0], a[0].mean(0), rtol=1e-6)


@pytest.mark.parametrize("start_layer", [0, 2])
def test_beyond_intuition_token_on_model(model, x, reference, start_layer):
    """Each block's values v = LN(z) W_v + b_v taken from the qkv weights, through proj's weight without its bias."""
    targets = reference[0]
    perception, tokens = torch.eye(17).expand(3, 17, 17), embed(model.net, x)
    with torch.no_grad():
        for b, blk in enumerate(model.net.blocks):
            if b >= start_layer:
                W, bias = blk.attn.qkv.weight[64:], blk.attn.qkv.bias[64:]          # the value rows of qkv (D = 32)
                projected = (blk.norm1(tokens) @ W.T + bias) @ blk.attn.proj.weight.T
                attention = reference[1][b].mean(1) * (projected.norm(dim=-1) / tokens.norm(dim=-1))[:, None, :]
                perception = perception + attention @ perception
            tokens = blk(tokens)
    expected = patches(integrated_feedback(model, x, targets, steps=5) * perception)
    assert expected.flatten(1).gt(0).sum(1).min() > 4
    close(token_map(model, x, "beyond-intuition-token", steps=5, start_layer=start_layer, internal_batch_size=7),
          expected)


@pytest.fixture(scope="module")
def twins():
    """timm's tiny ViT and its vitx and Hugging Face twins, identical weights: 3 blocks, 4 heads, D = 64, N = 65."""
    timm_net = tiny_timm()
    return {"vitx": vitx_twin(timm_net), "timm": timm_net, "hf": hf_twin(timm_net)}


def test_projected_values_and_inputs_agree_across_frameworks(twins):
    """Block b's input z_b and values after the output projection, LN(z_b) W_v W_oᵀ + b_v W_oᵀ, computed here from
    vitx's weights; timm's and Hugging Face's twins record the same, and nothing unless asked."""
    x = images(2, 3, 64, 64)
    net, expected_inputs, expected_values = twins["vitx"], [], []
    with torch.no_grad():
        tokens = embed(net, x)
        for blk in net.blocks:
            expected_inputs.append(tokens)
            v = blk.norm1(tokens) @ blk.attn.qkv.weight[128:].T + blk.attn.qkv.bias[128:]   # heads in order
            expected_values.append(v @ blk.attn.proj.weight.T)
            tokens = blk(tokens)
    for name, net in twins.items():
        with torch.no_grad(), vitx.trace(net, attentions=False, tokens=False, projected_values=True, inputs=True) as tr:
            vitx.load_model(net)(x)
        assert [t.shape for t in tr.projected_values + tr.inputs] == [(2, 65, 64)] * 6, name
        for actual, expected in zip(tr.projected_values + tr.inputs, expected_values + expected_inputs):
            close(actual, expected, rtol=1e-5)
        with torch.no_grad(), vitx.trace(net, attentions=False, projected_values=[-1]) as last:
            vitx.load_model(net)(x)
        assert last.inputs == [] and last.attentions == [] and len(last.projected_values) == 1
        close(last.projected_values[0], expected_values[-1], rtol=1e-5)
        with torch.no_grad(), vitx.trace(net) as default:
            vitx.load_model(net)(x)
        assert default.projected_values == [] and default.inputs == []


@pytest.mark.parametrize("exit", ["normal", "exception"])
def test_projected_values_and_inputs_leave_no_trace(twins, exit):
    x = images(2, 3, 64, 64)
    for net in twins.values():
        before = snapshot(net)
        with pytest.raises(RuntimeError, match="inside") if exit == "exception" else contextlib.nullcontext():
            with vitx.trace(net, attentions=False, tokens=False, projected_values=True, inputs=True) as tr:
                vitx.load_model(net)(x)
                assert snapshot(net) != before and len(tr.projected_values) == len(tr.inputs) == 3
                if exit == "exception":
                    raise RuntimeError("inside")
        assert snapshot(net) == before
        assert not any("forward" in m.__dict__ for m in net.modules())


def test_projected_values_refused_where_the_output_is_no_sum_of_values():
    """timm's scale_attn_norm normalises A v before the projection: refused on entering, blocks 0-1 already
    patched for their attention and undone."""
    net = tiny_timm(scale_attn_norm=True)
    before = snapshot(net)
    with pytest.raises(vitx.VitxError, match="normalises .*before the output projection.*projected_values"):
        with vitx.trace(net, projected_values=[-1]):
            pass
    assert snapshot(net) == before and not any("forward" in m.__dict__ for m in net.modules())


# --- atman -----------------------------------------------------------------------------------------

def test_suppression_scales_by_hand():
    # One prefix token and 3 patches: cos(e1, e2) = 0.8, cos(e2, e3) = 0.6, cos(e1, e3) = 0.
    tokens = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [0.8, 0.6], [0.0, 2.0]]])
    layout = TokenLayout(num_prefix=1, patch_size=(8, 8), grid=(1, 3))
    expected = [[1, 0.1, 0.28, 1], [1, 0.28, 0.1, 1], [1, 1, 1, 0.1]]         # p = 0.9: 1 - 0.9·0.8 = 0.28
    close(suppression_scales(tokens, layout, 0.9, 0.7)[:, 0], expected, rtol=1e-6)
    expected = [[1, 0.1, 0.28, 1], [1, 0.28, 0.1, 0.46], [1, 1, 0.46, 0.1]]   # κ = 0.5 adds 1 - 0.9·0.6
    close(suppression_scales(tokens, layout, 0.9, 0.5)[:, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("threshold", [0.7, 0.3])
def test_atman_matches_a_per_token_loop(model, x, reference, threshold):
    """Each patch suppressed alone, with its correlated patches, in its own forward written out here."""
    targets = reference[0]
    with torch.no_grad():
        logits, _, _, outputs = manual_forward(model.net, x)
        embeddings = outputs[0][:, 1:]
        expected, correlated = torch.zeros(3, 16), 0
        for b in range(3):
            for i in range(16):
                scale = torch.ones(1, 17)
                for k in range(16):
                    cosine = float(F.cosine_similarity(embeddings[b, i], embeddings[b, k], dim=0))
                    if k == i:
                        scale[0, 1 + k] = 1 - 0.9
                    elif cosine >= threshold:
                        scale[0, 1 + k] = 1 - 0.9 * cosine
                        correlated += 1
                suppressed, _, _, _ = manual_forward(model.net, x[b:b + 1], key_scale=scale)
                expected[b, i] = (F.cross_entropy(suppressed, targets[b:b + 1])
                                  - F.cross_entropy(logits[b:b + 1], targets[b:b + 1]))
    assert (correlated > 0) == (threshold < 0.5)
    close(token_map(model, x, "atman", threshold=threshold, internal_batch_size=7), expected.view(3, 4, 4))


# --- what each method needs ------------------------------------------------------------------------

def test_methods_without_class_token(x):
    """A mean-pooled model with no class token: the methods that read the head's row read the mean of the patch
    rows, grad-sam and atman need no row; attention-flow, whose source is the class token, refuses first."""
    torch.manual_seed(0)
    pooled = vitx.load_model(jitter(VisionTransformer(ViTConfig(**TINY, class_token=False, global_pool="avg"))))
    for name in ("grad-sam", "atman", "rollout", "generic-attention", "beyond-intuition-head",
                 "beyond-intuition-token"):
        assert torch.isfinite(token_map(pooled, x, name, **({"steps": 3} if "beyond" in name else {}))).all()
    with pytest.raises(vitx.VitxError, match="needs a head that reads the class token, and this model's head has none"):
        vitx.explain(pooled, x, "attention-flow")


@pytest.mark.parametrize("name, params, match", [
    ("attention-flow", {"start_layer": 3}, "start_layer"),
    ("beyond-intuition-head", {"start_layer": -1}, "start_layer"),
    ("beyond-intuition-head", {"steps": 1}, "steps"),
    ("beyond-intuition-head", {"internal_batch_size": 0}, "internal_batch_size"),
    ("beyond-intuition-token", {"start_layer": 3}, "start_layer"),
    ("beyond-intuition-token", {"steps": 1}, "steps"),
    ("atman", {"suppression": 1.5}, "suppression"),
    ("atman", {"threshold": -0.1}, "threshold"),
    ("atman", {"internal_batch_size": 0}, "internal_batch_size"),
])
def test_bad_parameters_are_vitx_errors(model, x, name, params, match):
    with pytest.raises(vitx.VitxError, match=match):
        vitx.explain(model, x, name, **params)
