"""Relevance propagation: each rule by hand on tiny layers, conservation where a rule conserves (and what
the others lose), Chefer et al.'s LRP written out explicitly as an oracle for ``lrp``,
``transformer-attribution`` and ``partial-lrp``, the same maps on vitx's, timm's and Hugging Face's ViT,
and a model left exactly as it was."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitx
from reference import close, hf_twin, images, snapshot, tiny_timm, vitx_twin
from vitx.batch import Batch
from vitx.models import ViTConfig, VisionTransformer
from vitx.methods.relevance import unit_relevance
from vitx.relevance import (ATTNLRP, CHEFER, AlphaBeta, Composite, DetachedStd, Epsilon, Gradient, Identity,
                            RelevanceProduct, ZBox, pixel_range)

METHODS = ["lrp", "transformer-attribution", "partial-lrp", "attnlrp"]
# Conservation holds to float32 rounding through the ~40 divisions of a 3-block ViT's backward.
CONSERVATION_RTOL = 1e-4


def relevance_in(rule, module, x, relevance_out):
    """The rule's input relevance for ``module`` at ``x`` given the output relevance: the backward is fed
    g_y = R_y / y, and R_x = x ⊙ g_x (for z^B, g_x itself)."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    gradient, = torch.autograd.grad(rule(module, x, y), x, relevance_out / y.detach())
    return gradient if isinstance(rule, ZBox) else x.detach() * gradient


# --- each rule by hand -----------------------------------------------------------------------------------

def two_by_three():
    """A linear layer from 3 inputs to 2 outputs; contributions x_i w_ji = [[2, 2, 3], [-1, -2, 6]]."""
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -1.0, 1.0], [-1.0, 1.0, 2.0]]))
        layer.bias.copy_(torch.tensor([0.5, -1.0]))
    return layer, torch.tensor([[1.0, -2.0, 3.0]])


def test_alpha_beta_by_hand():
    layer, x = two_by_three()
    r = torch.tensor([[7.0, 3.0]])
    # α=1, β=0: output 1's positive contributions [2, 2, 3] (sum 7) share 7; output 2's only positive one, 6,
    # takes all of 3. The bias (0.5, -1) is left out.
    close(relevance_in(AlphaBeta(1, 0), layer, x, r), torch.tensor([[2.0, 2.0, 6.0]]), rtol=1e-6)
    # α=2, β=1: minus output 2's negative contributions [-1, -2] (sum -3) sharing 3; output 1 has none.
    close(relevance_in(AlphaBeta(2, 1), layer, x, r), torch.tensor([[3.0, 2.0, 12.0]]), rtol=1e-6)
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        AlphaBeta(1, 1)


def test_epsilon_by_hand():
    """R_x = x ⊙ Wᵀ (R / (y + ε sign y)); y = [7.5, 2]: the bias keeps 0.5/7.5 and -1/2 of each output's share."""
    layer, x = two_by_three()
    r = torch.tensor([[7.5, 2.0]])
    expected = torch.tensor([[2.0 - 1.0, 2.0 - 2.0, 3.0 + 6.0]])    # contributions times R_j / y_j = 1
    close(relevance_in(Epsilon(1e-6), layer, x, r), expected, rtol=1e-5)
    # a large ε damps: R_j / (y_j + ε) = 7.5/8.5 and 2/3
    close(relevance_in(Epsilon(1.0), layer, x, r),
          torch.tensor([[2 * 7.5 / 8.5 - 2 / 3, 2 * 7.5 / 8.5 - 4 / 3, 3 * 7.5 / 8.5 + 4]]), rtol=1e-5)


def test_zbox_by_hand():
    """One 2x2 patch, one channel, bounds [-1, 2]: z^B terms x w - l w⁺ - h w⁻ = [1.5, 6, 0.5, 2] (sum 10)
    share R = 5. The pixel at 0 gets relevance through the bounds."""
    conv = nn.Conv2d(1, 1, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -2.0], [0.5, 1.0]]]]))
        conv.bias.fill_(0.25)
    x = torch.tensor([[[[0.5, -1.0], [0.0, 1.0]]]])
    rule = ZBox(torch.tensor([-1.0]), torch.tensor([2.0]))
    close(relevance_in(rule, conv, x, torch.full((1, 1, 1, 1), 5.0)),
          torch.tensor([[[[0.75, 3.0], [0.25, 1.0]]]]), rtol=1e-6)


def test_pixel_range_is_the_normalised_unit_interval():
    config = vitx.load_model(vitx_twin(tiny_timm())).config
    low, high = pixel_range(config)
    mean, std = torch.tensor(config.mean), torch.tensor(config.std)
    torch.testing.assert_close(low * std + mean, torch.zeros(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(high * std + mean, torch.ones(3), rtol=0, atol=1e-6)


def attention_by_hand(softmax):
    """One head of dimension 1 over two tokens: q = [1, -1], k = [1 + ln 3, 1] give A = [[3/4, 1/4], [1/4, 3/4]];
    v = [4, 8] gives A v = [5, 7], which gets relevance [10, 14] (g = R / out = 2 everywhere).
    Returns the relevance of q, k, v and of A (each (2,))."""
    product = RelevanceProduct(softmax)
    q = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1).requires_grad_(True)
    k = torch.tensor([1 + math.log(3), 1.0]).view(1, 1, 2, 1).requires_grad_(True)
    v = torch.tensor([4.0, 8.0]).view(1, 1, 2, 1).requires_grad_(True)
    attention = product.softmax(product.scores(q, k))
    close(attention.detach()[0, 0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]), rtol=1e-6)
    out = product.mix(attention, v)
    grads = torch.autograd.grad(out, [q, k, v, attention], torch.full_like(out, 2.0))
    return [(t * g).detach().squeeze() for t, g in zip([q, k, v, attention], grads)]


def test_attention_split_by_hand():
    """A v splits R_out uniformly: R_A = ½ A ⊙ (R_out/out) vᵀ = A_ij v_j = [[3, 2], [1, 6]] and R_v = [4, 8];
    with the identity rule at the softmax, q kᵀ splits R_A: R_q = ½ row sums, R_k = ½ column sums."""
    r_q, r_k, r_v, r_a = attention_by_hand(Identity())
    close(r_a, torch.tensor([[3.0, 2.0], [1.0, 6.0]]), rtol=1e-6)
    close(r_v, torch.tensor([4.0, 8.0]), rtol=1e-6)
    close(r_q, torch.tensor([2.5, 3.5]), rtol=1e-6)
    close(r_k, torch.tensor([2.0, 4.0]), rtol=1e-6)
    assert float(r_q.sum() + r_k.sum() + r_v.sum()) == pytest.approx(24.0, rel=1e-6)   # conserved


def test_attnlrp_softmax_by_hand():
    """AttnLRP's softmax rule R_s = s ⊙ (R_A − A ΣR_A): rows give R_s = [[-(1+ln3)·3/4, 3/4], [(1+ln3)·3/4, -3/4]],
    so R_q = ½ row sums = ∓ 3/8 ln 3 and R_k = ½ column sums = 0; A v splits as before."""
    r_q, r_k, r_v, r_a = attention_by_hand(Gradient())
    close(r_a, torch.tensor([[3.0, 2.0], [1.0, 6.0]]), rtol=1e-6)
    close(r_v, torch.tensor([4.0, 8.0]), rtol=1e-6)
    close(r_q, torch.tensor([-0.375, 0.375]) * math.log(3), rtol=1e-5)
    assert r_k.abs().max() < 1e-5


def test_identity_rule_by_hand():
    r = torch.tensor([[1.0, -2.0, 3.0, 4.0]])
    close(relevance_in(Identity(), nn.GELU(), torch.tensor([[-1.0, 0.5, 2.0, 3.0]]), r), r, rtol=1e-6)
    # elementwise R_x = R_y, except where x = 0 (and y is not): there x ⊙ g carries nothing
    norm = nn.LayerNorm(4, elementwise_affine=False)
    close(relevance_in(Identity(), norm, torch.tensor([[-1.0, 0.5, 2.0, 0.0]]), r),
          torch.tensor([[1.0, -2.0, 3.0, 0.0]]), rtol=1e-6)


# --- conservation ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layers():
    torch.manual_seed(0)
    return {"linear": nn.Linear(6, 4), "conv": nn.Conv2d(3, 5, 2, 2), "norm": nn.LayerNorm(6)}


def test_alpha_beta_and_zbox_conserve(layers):
    """αβ leaves the bias out: Σ R_x = Σ R_y wherever an output has a positive contribution; z^B likewise for
    pixels inside the bounds."""
    x, r = torch.randn(3, 6), torch.randn(3, 4)
    for rule in (AlphaBeta(1, 0), AlphaBeta(2, 1)):
        close(relevance_in(rule, layers["linear"], x, r).sum(), r.sum(), rtol=1e-5)
    low, high = -torch.ones(3), 2 * torch.ones(3)
    pixels = torch.rand(2, 3, 4, 4) * 3 - 1
    r = torch.randn(2, 5, 2, 2)
    rule = ZBox(low, high)
    close(relevance_in(rule, layers["conv"], pixels, r).sum((1, 2, 3)), r.sum((1, 2, 3)), rtol=1e-5)
    # the conv's own patch rule αβ conserves too
    close(relevance_in(AlphaBeta(1, 0), layers["conv"], pixels, r).sum(), r.sum(), rtol=1e-5)


def test_what_epsilon_and_detached_std_lose(layers):
    """They do not conserve: ε and the bias keep Σ_j (b_j + ε sign y_j) / (y_j + ε sign y_j) R_j; AttnLRP's
    LayerNorm rule gives the bias its share b_j / y_j R_j. The identity rule conserves elementwise."""
    linear, norm = layers["linear"], layers["norm"]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x, r = torch.randn(3, 6), torch.randn(3, 4)
    y = linear(x).detach()
    kept = (y - linear.bias.detach()) / (y + 0.1 * y.sign()) * r
    close(relevance_in(Epsilon(0.1), linear, x, r).sum(1), kept.sum(1), rtol=1e-5)
    r = torch.randn(3, 6)
    y = norm(x).detach()
    close(relevance_in(DetachedStd(), norm, x, r).sum(1), ((y - norm.bias.detach()) / y * r).sum(1), rtol=1e-4)
    close(relevance_in(Identity(), norm, x, r), r, rtol=1e-5)


@pytest.fixture(scope="module")
def twins():
    """timm's tiny ViT and vitx's and Hugging Face's with its weights."""
    timm_net = tiny_timm()
    return {"vitx": vitx_twin(timm_net), "timm": timm_net, "hf": hf_twin(timm_net)}


@pytest.fixture(scope="module")
def x():
    return images(2, 3, 64, 64)


def chefer_pass(model, x, normalised_adds=True):
    """Logits, the tap and the gradients of R = 1 at the predicted class with respect to the block outputs,
    the pixels, the class token and the position embedding, under Chefer et al.'s rules."""
    rules = CHEFER if normalised_adds else Composite("plain adds", CHEFER.layers, Identity(), False)
    batch = Batch(model, x, model.layout(x), None)
    pixels = x.clone().requires_grad_(True)
    logits, tr = batch.run(pixels, original=True, rules=rules)
    net = model.net
    wrt = tr.tokens + [pixels, net.cls_token, net.pos_embed]
    grads = torch.autograd.grad(unit_relevance(batch, logits), wrt)
    return tr, grads


@pytest.mark.parametrize("normalised_adds", [True, False])
def test_chefer_rules_conserve_through_the_model(twins, normalised_adds):
    """Every rule of Chefer et al.'s conserves (αβ, identity, uniform split, normalised or z-rule addition, z^B),
    so R = 1 at the target reaches every block output whole, and splits at the input between the pixels,
    the class token and the position embedding. One image at a time: the parameters' gradients sum over images."""
    model = vitx.load_model(twins["vitx"])
    for i in range(2):
        x = images(1, 3, 64, 64, seed=i)
        tr, grads = chefer_pass(model, x, normalised_adds)
        for tokens, gradient in zip(tr.tokens, grads):
            assert float((tokens.detach() * gradient).sum()) == pytest.approx(1.0, rel=CONSERVATION_RTOL)
        pixels, cls_token, pos_embed = grads[-3:]
        net = model.net
        inputs = pixels.sum() + (net.cls_token * cls_token).sum() + (net.pos_embed * pos_embed).sum()
        inputs = inputs.detach()
        assert float(inputs) == pytest.approx(1.0, rel=CONSERVATION_RTOL)


# --- Chefer et al.'s LRP written out, as in their reference code ------------------------------------------

def safe(a, b):
    return torch.where(b == 0, torch.zeros_like(a), a / (b + 1e-9 * b.sign()))


def explicit_alpha_beta(x, weight, r):
    """α=1, β=0: R_x = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻), S = R / (W⁺x⁺ + W⁻x⁻)."""
    wp, wn, xp, xn = weight.clamp(min=0), weight.clamp(max=0), x.clamp(min=0), x.clamp(max=0)
    s = safe(r, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def explicit_add(a, b, r, normalised=True):
    """z-rule shares of z = a + b, rescaled per image to |ΣR_a| : |ΣR_b| of ΣR when ``normalised``."""
    z = a + b
    ra, rb = a * safe(r, z), b * safe(r, z)
    if not normalised:
        return ra, rb
    dims = tuple(range(1, r.dim()))
    sa, sb, total = ra.sum(dims, keepdim=True), rb.sum(dims, keepdim=True), r.sum(dims, keepdim=True)
    share = sa.abs() + sb.abs()
    return ra * safe(safe(sa.abs(), share) * total, sa), rb * safe(safe(sb.abs(), share) * total, sb)


def explicit_chefer(net, x, targets, low, high, normalised_pos=False):
    """Chefer et al.'s relprop on vitx's ViT (patch stem, class token), from the weights: returns the pixel
    relevance (B, H, W) and each block's attention relevance R_A (B, heads, N, N). ``normalised_pos``: the
    reference code's normalised rule at the position-embedding addition (vitx keeps the z-rule there)."""
    B = len(x)
    patches = net.patch_embed.proj(x)
    tokens = torch.cat([net.cls_token.expand(B, -1, -1), patches.flatten(2).transpose(1, 2)], 1)
    pos = net.pos_embed.expand(B, -1, -1)
    t = tokens + pos
    saved = []
    for blk in net.blocks:
        attn, heads = blk.attn, blk.attn.num_heads
        h = blk.norm1(t)
        q, k, v = attn.qkv(h).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-1, -2)
        a = (s * attn.scale).softmax(-1)
        o = a @ v
        merged = o.transpose(1, 2).flatten(2)
        p = attn.proj(merged)
        t1 = t + p
        h2 = blk.norm2(t1)
        f1 = blk.mlp.fc1(h2)
        g1 = blk.mlp.act(f1)
        f2 = blk.mlp.fc2(g1)
        saved.append((t, h, q, k, v, s, a, o, merged, p, t1, h2, f1, g1, f2))
        t = t1 + f2
    final = net.norm(t)[:, 0]
    r = F.one_hot(targets, net.head.out_features).float()
    r_t = torch.zeros_like(t)
    r_t[:, 0] = explicit_alpha_beta(final, net.head.weight, r)          # pooling; LayerNorm: identity
    relevances = []
    for blk, (t, h, q, k, v, s, a, o, merged, p, t1, h2, f1, g1, f2) in reversed(list(zip(net.blocks, saved))):
        r_t1, r_f2 = explicit_add(t1, f2, r_t)
        r_f1 = explicit_alpha_beta(g1, blk.mlp.fc2.weight, r_f2)         # GELU: identity
        r_t1 = r_t1 + explicit_alpha_beta(h2, blk.mlp.fc1.weight, r_f1)  # LayerNorm: identity; clone: sum
        r_t0, r_p = explicit_add(t, p, r_t1)
        r_o = explicit_alpha_beta(merged, blk.attn.proj.weight, r_p).unflatten(-1, (blk.attn.num_heads, -1))
        r_o = safe(r_o.transpose(1, 2), o)
        r_a = a * (r_o @ v.transpose(-1, -2)) / 2                        # A v: uniform split
        r_v = v * (a.transpose(-1, -2) @ r_o) / 2
        r_s = safe(r_a, s)                                               # softmax: identity; scale: none
        r_q, r_k = q * (r_s @ k) / 2, k * (r_s.transpose(-1, -2) @ q) / 2
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).flatten(2)
        r_t = r_t0 + explicit_alpha_beta(h, blk.attn.qkv.weight, r_qkv)
        relevances.insert(0, r_a)
    r_tokens, _ = explicit_add(tokens, pos, r_t, normalised=normalised_pos)
    r_patches = r_tokens[:, 1:].transpose(1, 2).reshape(patches.shape)
    conv = net.patch_embed.proj
    weight = conv.weight
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    lo, hi = low.view(1, -1, 1, 1).expand_as(x), high.view(1, -1, 1, 1).expand_as(x)
    stride = conv.stride
    z = F.conv2d(x, weight, stride=stride) - F.conv2d(lo, wp, stride=stride) - F.conv2d(hi, wn, stride=stride)
    s = safe(r_patches, z)

    def back(w):
        return torch.nn.grad.conv2d_input(x.shape, w, s, stride=stride)
    pixels = x * back(weight) - lo * back(wp) - hi * back(wn)
    return pixels.sum(1).detach(), [r.detach() for r in relevances]


@pytest.fixture(scope="module")
def explicit(twins, x):
    net = twins["vitx"]
    model = vitx.load_model(net)
    with torch.no_grad():
        targets = model(x).argmax(1)
        low, high = pixel_range(model.config)
        return targets, explicit_chefer(net, x, targets, low, high), explicit_chefer(net, x, targets, low, high, True)


def plain_attention_gradients(net, x, targets):
    """∂y_t/∂A for each block from timm's unfused attention, captured by hooks (no tap involved)."""
    import copy
    net = copy.deepcopy(net)
    captured = []
    for block in net.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda module, inputs, output: captured.append(output))
    logits = net(x)
    return torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), captured)


def test_methods_match_the_explicit_reference(twins, x, explicit):
    targets, (pixels, relevances), (pixels_normalised_pos, _) = explicit
    maps = {m: vitx.explain(twins["vitx"], x, m, targets, normalize=False) for m in METHODS[:3]}
    close(maps["lrp"].maps, pixels)
    close(maps["partial-lrp"].token_maps, relevances[-1].clamp(min=0).mean(1)[:, 0, 1:].reshape(2, 8, 8))
    gradients = plain_attention_gradients(twins["timm"], x, targets)
    rollout = torch.eye(65).expand(2, 65, 65)
    for r_a, g in zip(relevances, gradients):                          # R = I; R += E_h[(∇A ⊙ R_A)⁺] R
        rollout = rollout + (g * r_a).clamp(min=0).mean(1) @ rollout
    close(maps["transformer-attribution"].token_maps, rollout[:, 0, 1:].reshape(2, 8, 8))
    # The reference code's normalised rule at the position embedding scales each image's map by one factor.
    ours, theirs = pixels.flatten(1), pixels_normalised_pos.flatten(1)
    factor = (ours * theirs).sum(1, keepdim=True) / ours.square().sum(1, keepdim=True)
    close(factor * ours, theirs)
    assert (factor - 1).abs().max() > 0.01


def test_normalised_additions_change_transformer_attribution(twins, x, explicit):
    """With the z-rule at the residual additions instead, every block's attention relevance differs."""
    model = vitx.load_model(twins["vitx"])
    targets, (_, relevances), _ = explicit
    batch = Batch(model, x, model.layout(x), targets)
    plain = Composite("plain adds", CHEFER.layers, Identity(), False)
    logits, tr = batch.run(rules=plain, tokens=False)
    gradients = torch.autograd.grad(unit_relevance(batch, logits), tr.attentions)
    for r_a, a, g in zip(relevances, tr.attentions, gradients):
        difference = (a.detach() * g - r_a).abs().max() / r_a.abs().max()
        assert difference > 0.01, difference


@pytest.mark.parametrize("method", METHODS)
def test_same_maps_on_vitx_timm_and_hugging_face(twins, x, method):
    config = vitx.load_model(twins["timm"]).config      # vitx's own module does not know timm's preprocessing
    maps = {name: vitx.explain(vitx.load_model(net, mean=config.mean, std=config.std), x, method, normalize=False)
            for name, net in twins.items()}
    assert maps["vitx"].maps.flatten(1).std(1).gt(0).all()
    for name in ("timm", "hf"):
        assert torch.equal(maps[name].targets, maps["vitx"].targets)
        close(maps[name].maps, maps["vitx"].maps)


def test_attnlrp_starts_from_the_logit(twins, x):
    """AttnLRP starts from R = y_t; with its rules nothing conserves exactly (biases, ε, the softmax's Taylor
    rule, LayerNorm's bias), but the pixels keep a share of the logit's sign and size."""
    model = vitx.load_model(twins["vitx"])
    exp = vitx.explain(model, x, "attnlrp", normalize=False)
    logit = exp.logits.gather(1, exp.targets[:, None])[:, 0]
    assert torch.isfinite(exp.maps).all() and (exp.maps.sum((1, 2)).sign() == logit.sign()).all()


def test_conv_stem_gets_its_rules():
    """vitx's early-convolution stem: z^B on the first convolution, αβ on the others, the identity rule on
    BatchNorm and ReLU; from the stem's output to the pixels nothing is lost."""
    torch.manual_seed(0)
    net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                                      stem="conv")).eval()
    model = vitx.load_model(net)
    assert model.adapter.layer_kind(net.patch_embed.stem[0]) == "pixels"
    assert [model.adapter.layer_kind(m) for m in net.patch_embed.stem[1:4]] == ["batchnorm", "activation", "linear"]
    stem_output = []
    net.patch_embed.proj.register_forward_pre_hook(lambda module, args: stem_output.append(args[0]))
    x = images(1, 3, 32, 32)
    batch = Batch(model, x, model.layout(x), None)
    pixels = x.clone().requires_grad_(True)
    logits, _ = batch.run(pixels, original=True, rules=CHEFER, attentions=False, tokens=False)
    to_stem, to_pixels = torch.autograd.grad(unit_relevance(batch, logits), [stem_output[0], pixels])
    stem_total = float((stem_output[0] * to_stem).sum().detach())
    assert float(to_pixels.sum()) == pytest.approx(stem_total, rel=CONSERVATION_RTOL)
    assert to_pixels.abs().sum() > 0.1
    for method in METHODS:
        assert torch.isfinite(vitx.explain(model, x, method, normalize=False).maps).all()


# --- binding: refusals and cleanup ----------------------------------------------------------------------

def test_unknown_layer_is_refused_before_running(x):
    net = vitx_twin(tiny_timm())
    net.blocks[1].mlp.act = nn.SiLU()
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    before = snapshot(net)
    for method, rules in (("lrp", "Chefer et al. 2021 LRP"), ("transformer-attribution", "Chefer et al. 2021 LRP"),
                          ("attnlrp", "AttnLRP")):
        with pytest.raises(vitx.VitxError, match=rf"the {rules} rules have none for layer 'blocks.1.mlp.act' \(SiLU\)"):
            vitx.explain(net, x, method)
    assert calls == [] and snapshot(net) == before


def test_timm_attention_gate_is_refused(x):
    net = tiny_timm()
    net.blocks[0].attn.gate = nn.Linear(64, 64)
    with pytest.raises(vitx.VitxError, match=r"layer 'blocks.0.attn.gate' \(attention gate\)"):
        vitx.explain(net, x, "partial-lrp")


@pytest.mark.parametrize("framework", ["vitx", "timm", "hf"])
@pytest.mark.parametrize("exit", ["normal", "exception"])
@pytest.mark.parametrize("rules", [CHEFER, ATTNLRP], ids=["chefer", "attnlrp"])
def test_model_restored_on_exit(twins, x, framework, exit, rules):
    """Bound rules change no value: the logits are the model's own; leaving the tap removes every hook."""
    net = twins[framework]
    model = vitx.load_model(net)
    before = snapshot(net)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(RuntimeError, match="inside") if exit == "exception" else contextlib.nullcontext():
        with vitx.trace(model, rules=rules):
            close(model(x).detach(), expected, rtol=1e-5)
            assert snapshot(net) != before
            if exit == "exception":
                raise RuntimeError("inside")
    assert snapshot(net) == before
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_refusal_during_binding_leaves_no_hooks(x):
    """A refusal while binding (a timm block whose residual additions the rules do not know) undoes what the
    tap had bound."""
    from timm.models.vision_transformer import ResPostBlock
    net = tiny_timm(block_fn=ResPostBlock)
    before = snapshot(net)
    with pytest.raises(vitx.VitxError, match="ResPostBlock is not the pre-norm Block"):
        vitx.explain(net, x, "lrp")
    assert snapshot(net) == before
    assert vitx.explain(net, x, "attnlrp", normalize=False).maps.abs().max() > 0   # plain additions need no rule
