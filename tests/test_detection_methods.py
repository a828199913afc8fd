"""The methods on a DETR-like detector (kind "detr"): one map per object, the row of its query.

The encoder-decoder rules are checked on explicit matrices and on a one-encoder, one-decoder-layer net whose
attention, gradients and LRP relevance are taken by a forward written out here (the attention by an explicit softmax,
not the model's fused kernel, nor vitx's tap); the authors' baselines (Chefer et al., ICCV 2021,
``DETR/modules/ExplanationGenerator.py``) are transcribed from their ``Generator`` and compared with ``vitx.explain``;
every method registered for detectors gives an object the same map in a batch as alone, and the others are refused
before running, with the reason.
"""
import copy
from types import SimpleNamespace

import pytest
import torch

import vitx
from vitx.adapters.base import Site
from vitx.errors import VitxError
from vitx.methods.bimodal import propagate
from vitx.model import wrap
from vitx.models import create_model
from vitx.registry import KIND_LIMITS, get_method, method_names
from vitx.trace import Recorded
from reference import snapshot
from test_bimodal_relevance import block, coattention, linear_rel, residual_mlp

DETR_METHODS = [name for name in method_names() if "detr" in get_method(name).kinds]
LIGHT = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 3}, "rise": {"masks": 16},
         "kernel-shap": {"samples": 24}}
QUERIES = [1, 6]       # the objects explained: these queries of every image, each for its likeliest object class
HF_QUERIES = [1, 4]    # of Hugging Face's tiny DETR, which has 6


def tiny(encoder_layers=1, decoder_layers=1, scale=0.3):
    """A small random detector, its weights larger than the initialisation's so attention and relevance are not flat."""
    torch.manual_seed(0)
    net = create_model("detr_shapes", encoder_layers=encoder_layers, decoder_layers=decoder_layers, embed_dim=16,
                       num_heads=2, image_size=32, stem="patch")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, scale) if p.dim() > 1 else p.uniform_(-scale, scale)
    return wrap(net.eval(), mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def deeper():
    return tiny(encoder_layers=2, decoder_layers=2)


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---- the detector written out: attention by an explicit softmax, LRP as the authors' relprop ----------------------

def decoder_layer(layer, q, memory, tape):
    """q += SelfAttn(LN(q)); q += CrossAttn(LN(q), LN(memory)); q += MLP(LN(q)); back(R) -> R_q (the memory's
    relevance is not needed: the baselines read the last layer). The two attention steps are residual attentions as
    a VQA model's co-attention (``coattention``), the self-attention's keys its own queries."""
    q1, back_self = coattention(SimpleNamespace(attn=layer.self_attn, norm=layer.norm1, norm_context=lambda c: c),
                                q, None, tape)
    q2, back_cross = coattention(SimpleNamespace(attn=layer.cross_attn, norm=layer.norm2,
                                                 norm_context=layer.norm_memory), q1, memory, tape)
    out, back_mlp = residual_mlp(layer.norm3, layer.mlp, q2)

    def back(relevance):
        return back_self(back_cross(back_mlp(relevance))[0])[0]
    return out, back


def by_hand(net, image, query, label):
    """One image (1, 3, H, W) through the net by hand: (logits (1, Q, C+1), the attention modules in forward order,
    tape {module: [A, R_A]} with R_A from R = 1 at (query, label), grads {module: ∂y/∂A})."""
    tape = {}
    tokens = net.patch_embed(image).flatten(2).transpose(1, 2) + net.image_pos
    for b in net.blocks:
        tokens, _ = block(b, tokens, tape)
    q, backs = net.query_embed.expand(1, -1, -1), []
    for layer in net.decoder:
        q, back = decoder_layer(layer, q, tokens, tape)
        backs.append(back)
    normed = net.norm(q)
    logits = net.class_head(normed)
    modules = list(tape)
    grads = torch.autograd.grad(logits[0, query, label], [tape[m][0] for m in modules], allow_unused=True,
                                materialize_grads=True)
    with torch.no_grad():
        start = torch.zeros_like(logits)
        start[0, query, label] = 1
        relevance = linear_rel(normed, net.class_head.weight, start)
        for back in reversed(backs):
            relevance = back(relevance)
    return logits, modules, tape, {m: g[0] for m, g in zip(modules, grads)}


def objects_of(exp):
    """(image, query, label) of each explained object."""
    return [(o["image"], o["query"], o["label"]) for o in exp.objects]


# ---- the encoder-decoder rules ---------------------------------------------------------------------------------

def test_rules_on_explicit_matrices():
    """Encoder self-attention, decoder self-attention, cross-attention, a second decoder self-attention, by hand:
    R_ii = I + Ā_ii = [[2, 0], [1, 2]], R̄_ii = rownorm(R_ii − I) + I = [[2, 0], [.5, 1.5]];
    R_qq = I + Ā_qq = [[2, 1], [0, 3]], R̄_qq = [[1.5, .5], [0, 2]]; R_qi = R̄_qqᵀ I R̄_ii = [[3, 0], [2, 3]];
    then R_qi += S R_qi with S the swap = [[5, 3], [5, 3]], R_qq += S R_qq = [[2, 4], [2, 4]]."""
    weights = [torch.tensor([[1., 0], [1, 1]]), torch.tensor([[1., 1], [0, 2]]), torch.eye(2),
               torch.tensor([[0., 1], [1, 0]])]
    sites = [Site("blocks.0", "image", "image", 0), Site("decoder.0.self_attn", "queries", "queries", 0),
             Site("decoder.0.cross_attn", "queries", "image", 0), Site("decoder.1.self_attn", "queries", "queries", 1)]
    recorded = [Recorded(s, w[None, None]) for s, w in zip(sites, weights)]
    relevance = propagate(recorded, [w[None] for w in weights])
    torch.testing.assert_close(relevance["queries", "image"][0], torch.tensor([[5., 3], [5, 3]]))
    torch.testing.assert_close(relevance["queries", "queries"][0], torch.tensor([[2., 4], [2, 4]]))
    torch.testing.assert_close(relevance["image", "image"][0], torch.tensor([[2., 0], [1, 2]]))


def normalised(r):
    """R̄ = rownorm(R − I) + I; a row of R − I that sums to 0 (every Ā entry of it clamped to 0) left as it is."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    sums = (r - eye).sum(-1, keepdim=True)
    return torch.where(sums != 0, (r - eye) / sums, r - eye) + eye


def test_generic_attention_follows_the_rules_by_hand(model, x):
    exp = vitx.explain(model, x[:2], method="generic-attention", target=QUERIES, normalize=False)
    assert len(exp.objects) == 4
    net = model.net
    for row, (image, query, label) in enumerate(objects_of(exp)):
        logits, modules, tape, grads = by_hand(net, x[image:image + 1], query, label)
        torch.testing.assert_close(logits, net(x[image:image + 1])[0])
        encoder, decoder_self, cross = ((grads[m] * tape[m][0].detach()[0]).clamp(min=0).mean(0) for m in modules)
        eye_i, eye_q = torch.eye(encoder.shape[-1]), torch.eye(decoder_self.shape[-1])
        r_ii, r_qq = eye_i + encoder, eye_q + decoder_self                 # R += Ā R from I
        r_qi = normalised(r_qq).T @ cross @ normalised(r_ii)              # R_qi = 0 before the cross-attention
        expected = r_qi[query].view(net.grid_size)
        assert expected.abs().max() > 0
        torch.testing.assert_close(exp.token_maps[row], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert not torch.allclose(exp.token_maps[0], exp.token_maps[1])       # two queries of one image: two maps


# ---- the authors' baselines, transcribed from their Generator -------------------------------------------------

def rollout(matrices):
    """Their compute_rollout_attention: Â = (Ā + I) / rowsum, joint = Â_n ⋯ Â_1."""
    joint = None
    for matrix in matrices:
        matrix = matrix + torch.eye(matrix.shape[-1], dtype=matrix.dtype)
        matrix = matrix / matrix.sum(-1, keepdim=True)
        joint = matrix if joint is None else matrix @ joint
    return joint


def authors_matrix(method, sites, attentions, gradient=None, relevance=None):
    """The authors' Generator on one image: ``attentions`` (heads, Nq, Nk) of every site in forward order, the last
    one the last decoder layer's cross-attention A, ``gradient`` ∇A and ``relevance`` R_A its own."""
    assert (sites[-1].query, sites[-1].key) == ("queries", "image")
    A = attentions[-1]
    if method == "raw-attention":                                          # generate_raw_attn
        return A.mean(0)
    if method == "rollout":                                                # generate_rollout
        r_ii = rollout([a.mean(0) for a, s in zip(attentions, sites) if s.query == s.key == "image"])
        r_qq = rollout([a.mean(0) for a, s in zip(attentions, sites) if s.query == s.key == "queries"])
        return r_qq.T @ A.mean(0) @ r_ii
    if method == "attention-gradcam":                                      # gradcam
        return (A * gradient.mean(dim=[1, 2], keepdim=True)).mean(0).clamp(min=0)
    if method == "partial-lrp":                                            # generate_partial_lrp
        cam = relevance.mean(0)
        return (cam - cam.min()) / (cam.max() - cam.min())
    return (gradient * relevance).clamp(min=0).mean(0)                     # generate_transformer_att


def authors_map(net, sites, method, image, query, label):
    """The object's map by the authors' Generator, from the forward written out above (float64)."""
    _, modules, tape, grads = by_hand(net, image, query, label)
    last = modules[-1]
    matrix = authors_matrix(method, sites, [tape[m][0].detach()[0] for m in modules], grads[last], tape[last][1][0])
    return matrix[query].view(net.grid_size)


@pytest.mark.parametrize("method", ["raw-attention", "rollout", "attention-gradcam", "partial-lrp",
                                    "transformer-attribution"])
def test_baselines_equal_the_authors_formulas(deeper, x, method):
    precision = {"precision": "float64"} if method in ("partial-lrp", "transformer-attribution") else {}
    exp = vitx.explain(deeper, x[:2], method=method, target=QUERIES, normalize=False, **precision)
    net64 = copy.deepcopy(deeper.net).double()
    expected = torch.stack([authors_map(net64, deeper.adapter.sites(), method, x[image:image + 1].double(), query,
                                        label) for image, query, label in objects_of(exp)])
    scale = float(expected.abs().max())
    assert scale > 0 and len(expected) == 4
    torch.testing.assert_close(exp.token_maps.double(), expected, rtol=1e-4, atol=1e-5 * scale)


def test_lrp_relevance_of_the_cross_attention_is_the_authors(deeper, x):
    """R_A of every decoder attention by vitx's rules equals the relprop written out above (the decoder's residual
    additions, its MLP, the cross-attention reading the memory through norm_memory)."""
    model64 = wrap(copy.deepcopy(deeper.net).double(), mean=(0.5,) * 3, std=(0.25,) * 3)
    image, query, label = x[:1].double(), 2, 0
    _, modules, tape, _ = by_hand(model64.net, image, query, label)
    with vitx.trace(model64, rules=vitx.relevance.CHEFER, tokens=False) as tr:
        logits = model64(image)[:, query, label]
    grads = torch.autograd.grad((logits / logits.detach()).sum(), tr.attentions, allow_unused=True,
                                materialize_grads=True)
    decoder = [i for i, s in enumerate(model64.adapter.sites()) if s.query == "queries"]
    peak = max(float(tape[modules[i]][1].abs().max()) for i in decoder)
    for i in decoder:
        ours = tr.attentions[i].detach() * grads[i]
        torch.testing.assert_close(ours, tape[modules[i]][1], rtol=1e-4, atol=1e-4 * peak)
        assert ours.abs().max() > 0


# ---- gradient and perturbation methods: the object's query and class ------------------------------------------

def test_saliency_integrated_gradients_and_occlusion_score_the_objects_query(model, x):
    net = model.net
    image, query = x[:1], QUERIES[0]
    label = int(net(image)[0][0, query, :-1].argmax())

    def score(images):
        return net(images)[0][:, query, label]

    exp = vitx.explain(model, image, method="saliency", target=[query], normalize=False)
    pixels = image.clone().requires_grad_(True)
    gradient, = torch.autograd.grad(score(pixels).sum(), pixels)
    torch.testing.assert_close(exp.maps[0], gradient.abs().amax(1)[0])

    exp = vitx.explain(model, image, method="integrated-gradients", target=[query], normalize=False, steps=32)
    black = model.normalize(torch.zeros_like(image))
    with torch.no_grad():
        total = float(score(image) - score(black))                             # completeness, from the black image
    assert abs(float(exp.maps.sum()) - total) < 1e-3 * abs(total) + 1e-5

    exp = vitx.explain(model, image, method="occlusion", target=[query], normalize=False, window=1)
    patch = net.cfg.patch_size
    expected = torch.zeros(net.grid_size)
    with torch.no_grad():
        for r in range(net.grid_size[0]):
            for c in range(net.grid_size[1]):
                occluded = image.clone()
                occluded[..., r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 0   # 0 in model input space
                expected[r, c] = score(image) - score(occluded)
    torch.testing.assert_close(exp.token_maps[0], expected, rtol=1e-4, atol=1e-6)


# ---- batches, refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", DETR_METHODS)
def test_a_batch_gives_each_object_its_map_alone(deeper, x, method):
    params = LIGHT.get(method, {})
    together = vitx.explain(deeper, x, method=method, target=QUERIES, normalize=False, **params)
    alone = [vitx.explain(deeper, x[i:i + 1], method=method, target=QUERIES, normalize=False, **params)
             for i in range(len(x))]
    assert [o["image"] for o in together.objects] == [0, 0, 1, 1, 2, 2]
    assert [o["query"] for o in together.objects] == QUERIES * 3
    singles = torch.cat([e.maps for e in alone])
    assert torch.isfinite(together.maps).all() and singles.abs().max() > 0
    torch.testing.assert_close(together.maps, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))
    assert [o["label"] for o in together.objects] == [o["label"] for e in alone for o in e.objects]


def no_hooks(net):
    return not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("method", [m for m in method_names() if m not in DETR_METHODS])
def test_other_methods_are_refused_with_the_reason(model, x, method):
    forwards = []
    handle = model.net.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(VitxError, match="does not apply to 'detr' models: ") as caught:
            vitx.explain(model, x[:1], method=method)
    finally:
        handle.remove()
    limits = KIND_LIMITS["detr"]
    assert limits.get(get_method(method).family, limits.get("")) in str(caught.value)
    assert not forwards and no_hooks(model.net)


@pytest.mark.parametrize("method, params, words", [
    ("raw-attention", {"block": 0}, "on a detector this method takes Chefer et al.'s form only, with block=-1"),
    ("rollout", {"head_fusion": "max"}, "head_fusion='mean'"),
    ("attention-gradcam", {"block": 0}, "block=-1"),
    ("transformer-attribution", {"start_layer": 1}, "start_layer=0"),
    ("occlusion", {"removal": "attention"}, "a detector's objects are its queries"),
    ("kernel-shap", {"removal": "attention"}, "use removal='baseline'")])
def test_other_forms_are_refused(model, x, method, params, words):
    with pytest.raises(VitxError, match=words):
        vitx.explain(model, x[:1], method=method, **params)
    assert no_hooks(model.net)


# ---- Hugging Face DETR: the same methods on transformers' detector ---------------------------------------------

@pytest.fixture(scope="module")
def hf_detr():
    pytest.importorskip("transformers")
    from test_hf_detr import tiny_detr
    return wrap(tiny_detr(), image_size=(64, 64))


@pytest.mark.parametrize("method", ["raw-attention", "rollout", "attention-gradcam"])
def test_baselines_on_hugging_face_detr_equal_the_authors_formulas(hf_detr, method):
    from test_hf_detr import their_attentions
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    exp = vitx.explain(hf_detr, x, method=method, target=HF_QUERIES, normalize=False)
    expected = []
    for image, query, label in objects_of(exp):
        attentions, out = their_attentions(hf_detr.net, x[image:image + 1])
        gradient, = torch.autograd.grad(out.logits[0, query, label], attentions[-1])
        matrix = authors_matrix(method, hf_detr.adapter.sites(), [a.detach()[0] for a in attentions], gradient[0])
        expected.append(matrix[query].view(4, 4))
    expected = torch.stack(expected)
    assert expected.abs().max() > 0
    torch.testing.assert_close(exp.token_maps, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("method", DETR_METHODS)
def test_hugging_face_detr_batches_or_refuses(hf_detr, method):
    """Every detr method gives an object of Hugging Face's DETR its map alone, or (the relevance rules, which know
    pre-norm blocks) is refused before running."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    params = LIGHT.get(method, {})
    if get_method(method).family == "relevance":
        before = snapshot(hf_detr.net)
        with pytest.raises(VitxError, match="do not bind to this DetrForObjectDetection: its adapter does not name"):
            vitx.explain(hf_detr, x, method=method, target=HF_QUERIES)
        assert snapshot(hf_detr.net) == before
        return
    together = vitx.explain(hf_detr, x, method=method, target=HF_QUERIES, normalize=False, **params)
    singles = torch.cat([vitx.explain(hf_detr, x[i:i + 1], method=method, target=HF_QUERIES, normalize=False,
                                      **params).maps for i in range(len(x))])
    assert singles.abs().max() > 0
    # its ResNet's convolutions round differently by batch size (measured: 2e-5 of the largest entry, in float32)
    torch.testing.assert_close(together.maps, singles, rtol=1e-4, atol=1e-4 * float(singles.abs().max()))
