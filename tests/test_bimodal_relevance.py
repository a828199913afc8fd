"""partial-lrp and transformer-attribution on VQA models.

The relevance that vitx's rules give every attention map is checked against an LRP written here layer by layer, as
the authors' ``relprop`` runs it (Chefer et al., Transformer-MM-Explainability: αβ with α=1, β=0 on linear layers,
the identity on LayerNorm, GELU and softmax, half the relevance to each operand of q kᵀ and A v, the normalised
rule at every residual addition, relevances of a tensor read twice summed), on tiny nets in float64. The two
methods are then checked against the authors' GeneratorBaselines formulas run pair by pair on unpadded questions.
"""
import copy

import pytest
import torch

import vitx
from vitx.data import shapes_vqa
from vitx.errors import VitxError
from vitx.model import wrap
from vitx.models import create_model
from vitx.relevance import CHEFER
from vitx.text import Text

TINY = dict(embed_dim=8, num_heads=2, image_size=32, stem="patch")
ARCHS = {"vqa_shapes_single": dict(depth=2), "vqa_shapes_dual": dict(text_layers=1, image_layers=1, cross_layers=2)}
METHODS = ["partial-lrp", "transformer-attribution"]


def tiny(arch: str, scale: float = 0.3):
    torch.manual_seed(0)
    net = create_model(arch, **TINY, **ARCHS[arch])
    with torch.no_grad():       # weights larger than the initialisation's: attention and relevance not flat
        for p in net.parameters():
            p.normal_(0, scale) if p.dim() > 1 else p.uniform_(-scale, scale)
    return wrap(net.eval())


@pytest.fixture(scope="module")
def data():
    return shapes_vqa(n=6, seed=2, image_size=32)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def model(request):
    return tiny(request.param)


@pytest.fixture(scope="module")
def model64(model):
    return wrap(copy.deepcopy(model.net).double())


# ---- the authors' relprop, written out ------------------------------------------------------------------------

def safe(a, b):
    return torch.where(b == 0, torch.zeros_like(a), a / torch.where(b == 0, torch.ones_like(b), b))


def linear_rel(x, weight, relevance):
    """αβ, α=1 β=0: relevance along the positive contributions x_i w_ji only, bias left out."""
    wp, wn, xp, xn = weight.clamp(min=0), weight.clamp(max=0), x.clamp(min=0), x.clamp(max=0)
    s = safe(relevance, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def add_rel(a, b, relevance):
    """The normalised rule at z = a + b, per image: z-rule shares rescaled by |ΣR_a| / (|ΣR_a| + |ΣR_b|) · ΣR."""
    s = safe(relevance, a + b)
    ra, rb = a * s, b * s
    dims = tuple(range(1, relevance.dim()))
    sa, sb, total = (t.sum(dims, keepdim=True) for t in (ra, rb, relevance))
    share = sa.abs() + sb.abs()
    return ra * safe(safe(sa.abs(), share) * total, sa), rb * safe(safe(sb.abs(), share) * total, sb)


def product_rel(a, b, relevance):
    """z = a @ b: the z-rule to each operand, halved."""
    s = safe(relevance, a @ b)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def heads_to_tokens(*parts):
    """Per-head relevances (B, h, N, d) of the parts of one projection -> its output's layout (B, N, parts·h·d)."""
    stacked = torch.stack(parts, 2)                     # (B, h, parts, N, d)
    B, h, count, N, d = stacked.shape
    return stacked.permute(0, 3, 2, 1, 4).reshape(B, N, count * h * d)


def attention(m, x, context, tape):
    """m's attention forward by hand: output and back(R) -> (R_x, R_context); tape[m] = (A, R_A when back ran)."""
    q, k, v = m.split_heads(x, context)
    weights = (q @ k.transpose(-1, -2) * m.scale).softmax(-1)
    mixed = weights @ v
    B, h, N, d = mixed.shape
    merged = mixed.transpose(1, 2).reshape(B, N, h * d)
    tape[m] = [weights, None]

    def back(relevance):
        into = linear_rel(merged, m.proj.weight, relevance).reshape(B, N, h, d).transpose(1, 2)
        r_weights, r_v = product_rel(weights, v, into)
        tape[m][1] = r_weights
        r_q, r_kt = product_rel(q, k.transpose(-1, -2), r_weights)     # softmax and scale: R passes unchanged
        r_k = r_kt.transpose(-1, -2)
        if not m.cross:
            return linear_rel(x, m.qkv.weight, heads_to_tokens(r_q, r_k, r_v)), None
        return (linear_rel(x, m.q.weight, heads_to_tokens(r_q)),
                linear_rel(context, m.kv.weight, heads_to_tokens(r_k, r_v)))
    return m.proj(merged), back


def residual_mlp(norm, mlp, x):
    """x + MLP(norm(x)) and back(R) -> R_x."""
    normed = norm(x)
    hidden = mlp.act(mlp.fc1(normed))
    out = mlp.fc2(hidden)

    def back(relevance):
        r_x, r_out = add_rel(x, out, relevance)
        return r_x + linear_rel(normed, mlp.fc1.weight, linear_rel(hidden, mlp.fc2.weight, r_out))
    return x + out, back


def block(b, x, tape):
    attended, back_attention = attention(b.attn, b.norm1(x), None, tape)
    x1 = x + attended
    out, back_mlp = residual_mlp(b.norm2, b.mlp, x1)

    def back(relevance):
        r_x, r_attended = add_rel(x, attended, back_mlp(relevance))
        return r_x + back_attention(r_attended)[0]
    return out, back


def coattention(c, x, context, tape):
    attended, back_attention = attention(c.attn, c.norm(x), c.norm_context(context), tape)

    def back(relevance):
        r_x, r_attended = add_rel(x, attended, relevance)
        r_query, r_context = back_attention(r_attended)
        return r_x + r_query, r_context
    return x + attended, back


def cross_layer(layer, t, i, tape):
    tc, back_tc = coattention(layer.text_cross, t, i, tape)
    ic, back_ic = coattention(layer.image_cross, i, t, tape)
    t2, back_ts = block(layer.text_self, tc, tape)
    i2, back_is = block(layer.image_self, ic, tape)

    def back(r_t, r_i):
        (t_own, i_read), (i_own, t_read) = back_tc(back_ts(r_t)), back_ic(back_is(r_i))
        return t_own + t_read, i_own + i_read
    return t2, i2, back


def authors_lrp(net, images, ids, target):
    """One unpadded pair through the net by hand: logits, and per attention module [A, R_A] from R = 1 at
    ``target`` (A on the autograd graph, R_A computed without it)."""
    tape = {}
    t, i = net.embed_text(ids), net.embed_image(images)
    if net.cfg.streams == "single":
        x = torch.cat([t + net.type_embed[0], i + net.type_embed[1]], 1)
        backs = []
        for b in net.blocks:
            x, back = block(b, x, tape)
            backs.append(back)
        t = x
    else:
        text_backs, image_backs, cross_backs = [], [], []
        for b in net.text_blocks:
            t, back = block(b, t, tape)
            text_backs.append(back)
        for b in net.image_blocks:
            i, back = block(b, i, tape)
            image_backs.append(back)
        for layer in net.cross_layers:
            t, i, back = cross_layer(layer, t, i, tape)
            cross_backs.append(back)
    normed = net.norm(t[:, 0])
    hidden = net.head[1](net.head[0](normed))
    logits = net.head[2](hidden)
    with torch.no_grad():
        start = torch.zeros_like(logits)
        start[:, target] = 1
        r_t = torch.zeros_like(t)
        r_t[:, 0] = linear_rel(normed, net.head[0].weight, linear_rel(hidden, net.head[2].weight, start))
        if net.cfg.streams == "single":
            for back in reversed(backs):
                r_t = back(r_t)
        else:
            r_i = torch.zeros_like(i)
            for back in reversed(cross_backs):
                r_t, r_i = back(r_t, r_i)
            for back in reversed(image_backs):
                r_i = back(r_i)
            for back in reversed(text_backs):
                r_t = back(r_t)
    return logits, tape


def unpadded(model, questions, i):
    text = model.encode_text(questions)
    n = int(text.mask[i].sum())
    return Text(text.ids[i:i + 1, :n], text.mask[i:i + 1, :n], text.tokens[i:i + 1])


TARGET = 2


def test_rules_equal_the_authors_relprop_at_every_attention(model64, data):
    x = model64.normalize(data.images[:3]).double()
    modules = model64.adapter.attentions()
    for i in range(3):
        text = unpadded(model64, list(data.questions), i)
        logits, tape = authors_lrp(model64.net, x[i:i + 1], text.ids, TARGET)
        torch.testing.assert_close(logits, model64.net(x[i:i + 1], text.ids, text.mask))
        with vitx.trace(model64, rules=CHEFER, tokens=False) as tr:
            ours = model64(x[i:i + 1], text)
        chosen = ours[:, TARGET]
        grads = torch.autograd.grad((chosen / chosen.detach()).sum(), tr.attentions, allow_unused=True,
                                    materialize_grads=True)
        assert len(grads) == len(modules) == len(tape)
        peak = max(float(tape[m][1].abs().max()) for m in modules)
        for module, attention_map, grad in zip(modules, tr.attentions, grads):
            # vitx stabilises its divisions (x + 1e-9·sign x) and takes z⁺ as (W x + |W| |x|) / 2: where z⁺ is tiny
            # beside |W| |x| the shares move, by as much as the authors' own 1e-9 moves them here (3e-5 of the peak)
            torch.testing.assert_close(attention_map.detach() * grad, tape[module][1], rtol=1e-4, atol=1e-4 * peak)
        relevant = [tape[m][1].abs().max() for m in modules]
        assert sum(float(r) > 0 for r in relevant) >= len(modules) - 2   # the last image-side sites reach nothing


def authors_maps(model, method, x, text):
    """(image (gh, gw), text (n,)) for one unpadded pair by GeneratorBaselines' formulas, R_A by the relprop above
    and ∇A by autograd through the same hand-written forward."""
    net = model.net
    logits, tape = authors_lrp(net, x, text.ids, TARGET)
    modules = model.adapter.attentions()
    sites = model.adapter.sites()
    grads = torch.autograd.grad(logits[0, TARGET], [tape[m][0] for m in modules], allow_unused=True,
                                materialize_grads=True)
    cams = {m: (tape[m][1][0], g[0]) for m, g in zip(modules, grads)}      # batch of one: (heads, Nq, Nk)

    def avg_heads(m):     # rule 5 with R_A in A's place
        relevance, grad = cams[m]
        return (grad * relevance).clamp(min=0).mean(0)

    def scaled(m):        # partial LRP: heads averaged, the whole matrix min-max scaled
        cam = cams[m][0].mean(0)
        return (cam - cam.min()) / (cam.max() - cam.min())

    text_sites = [m for m, s in zip(modules, sites) if s.query == s.key and s.query in ("text", "joint")]
    across = [m for m, s in zip(modules, sites) if s.query == "text" and s.key == "image"]
    n = text.ids.shape[1]
    if method == "partial-lrp":
        tt = scaled(text_sites[-1])
        ti = tt if not across else scaled(across[-1])
    else:
        tt = torch.eye(cams[text_sites[0]][0].shape[-1], dtype=x.dtype)
        for m in text_sites:
            tt = tt + avg_heads(m) @ tt
        ti = tt if not across else avg_heads(across[-1])
    words = tt[0, :n].clone()
    words[0] = 0
    image = ti[0, n:] if not across else ti[0]
    return image.view(net.grid_size), words


@pytest.mark.parametrize("method", METHODS)
def test_methods_follow_the_authors_formulas(model, model64, data, method):
    pairs = 4
    questions = list(data.questions[:pairs])
    x = model.normalize(data.images[:pairs])
    exp = vitx.explain(model, x, text=questions, method=method, target=TARGET, normalize=False, precision="float64")
    encoded = model.encode_text(questions)
    assert (encoded.mask.sum(1) < encoded.mask.shape[1]).any(), "the batch should hold padded questions"
    for i in range(pairs):
        n = int(encoded.mask[i].sum())
        image, words = authors_maps(model64, method, x[i:i + 1].double(), unpadded(model64, questions, i))
        scale = float(image.abs().max())
        assert scale > 0
        torch.testing.assert_close(exp.token_maps[i].double(), image, rtol=1e-4, atol=1e-6 * scale)
        torch.testing.assert_close(exp.text_maps[i, :n].double(), words, rtol=1e-4, atol=1e-6 * scale)
        assert not exp.text_maps[i, n:].any()


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_singles(model, data, method):
    x, questions = model.normalize(data.images), list(data.questions)
    together = vitx.explain(model, x, text=questions, method=method, normalize=False, batch_size=6)
    alone = vitx.explain(model, x, text=questions, method=method, normalize=False, batch_size=1)
    torch.testing.assert_close(together.maps, alone.maps, rtol=1e-4, atol=1e-6 * float(alone.maps.abs().max()))
    torch.testing.assert_close(together.text_maps, alone.text_maps, rtol=1e-4,
                               atol=1e-6 * float(alone.text_maps.abs().max()))


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("method", METHODS)
def test_full_architectures_give_finite_varied_maps(arch, method):
    torch.manual_seed(1)
    model = wrap(create_model(arch).eval())
    data = shapes_vqa(n=2, seed=5)
    exp = vitx.explain(model, model.normalize(data.images), text=list(data.questions), method=method)
    for maps in (exp.maps, exp.token_maps, exp.text_maps):
        assert torch.isfinite(maps).all()
        assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.net.modules())


@pytest.mark.parametrize("method, params, words", [
    ("lrp", {}, "returns the relevance of the pixels alone"),
    ("attnlrp", {}, "partial-lrp and transformer-attribution apply to VQA models"),
    ("transformer-attribution", {"start_layer": 1}, "start_layer=0"),
    ("partial-lrp", {"precision": "float16"}, "precision must be")])
def test_refused(model, data, method, params, words):
    with pytest.raises(VitxError, match=words):
        vitx.explain(model, model.normalize(data.images[:2]), text=list(data.questions[:2]), method=method, **params)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.net.modules())


@pytest.mark.parametrize("method", METHODS)
def test_region_models_refused(method, tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_hf_vqa import FEATURES, QUESTIONS, REGIONS, WORDS, lxmert
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    model = wrap(lxmert(), tokenizer=transformers.BertTokenizer(vocab=str(tmp_path / "vocab.txt")))
    x = model.regions(torch.randn(3, REGIONS, FEATURES), torch.rand(3, REGIONS, 4))
    with pytest.raises(VitxError, match="post-norm"):
        vitx.explain(model, x, text=QUESTIONS, method=method)
