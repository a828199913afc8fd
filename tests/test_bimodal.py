"""Chefer et al.'s bi-modal rules (methods/bimodal.py): a hand-computed co-attention case, batching, and the
authors' update order written out per pair on vitx's one- and two-stream VQA transformers."""
import pytest
import torch

import vitx
from vitx.adapters.base import Site
from vitx.data import shapes_vqa
from vitx.methods.bimodal import normalised, propagate
from vitx.model import wrap
from vitx.models import create_model
from vitx.text import Text
from vitx.trace import Recorded


def site(name, query, key, block, weights):
    weights = torch.tensor(weights, dtype=torch.float64)[None]
    return Recorded(Site(name, query, key, block), weights[:, None]), weights


def test_rules_10_and_11_by_hand():
    """Two text and two image tokens: a self-attention per stream, two cross-modality layers, a text
    self-attention between them. Every number below was worked out by hand from rules 6, 7, 10, 11 and
    R̄ = rownorm(R − I) + I."""
    steps = [site("t0", "text", "text", 0, [[1, 1], [0, 2]]),        # R_tt = [[2, 1], [0, 3]]
             site("i0", "image", "image", 0, [[2, 0], [1, 1]]),       # R_ii = [[3, 0], [1, 2]]
             site("x0.t", "text", "image", 0, [[1, 0], [0, 1]]),      # R̄_tt = [[1.5, .5], [0, 2]], R̄_ii = [[2, 0], [.5, 1.5]]
             site("x0.i", "image", "text", 0, [[0, 1], [1, 0]]),      # R_ti = [[3, 0], [2, 3]], R_it = [[.75, 4.25], [2.25, .75]]
             site("t1", "text", "text", 1, [[0, 1], [0, 0]]),         # R_tt = [[2, 4], [0, 3]], R_ti = [[5, 3], [2, 3]]
             site("x1.t", "text", "image", 1, [[1, 1], [0, 0]]),      # R̄_tt = [[1.2, .8], [0, 2]]
             site("x1.i", "image", "text", 1, [[1, 0], [0, 1]])]
    sites, weights = zip(*steps)
    relevance = propagate(list(sites), list(weights))
    # rule 10: R_ti += R̄_ttᵀ A R̄_ii = [[3, 1.8], [2, 1.2]]; rule 11: R_tt += A R_it = [[3, 5], [0, 0]]
    assert torch.allclose(relevance["text", "image"][0], torch.tensor([[8, 4.8], [4, 4.2]], dtype=torch.float64))
    assert torch.allclose(relevance["text", "text"][0], torch.tensor([[5, 9], [0, 3]], dtype=torch.float64))
    # the image side of the first layer, from the same state as the text side
    assert torch.allclose(relevance["image", "text"][0] - torch.tensor([[0.75, 4.25], [2.25, 0.75]], dtype=torch.float64),
                          normalised(torch.tensor([[[3., 0], [1, 2]]], dtype=torch.float64))[0].T
                          @ torch.eye(2, dtype=torch.float64)
                          @ normalised(torch.tensor([[[2., 4], [0, 3]]], dtype=torch.float64))[0])


def test_normalisation_keeps_rows_without_residual():
    """R̄ of I is I (the authors' code divides 0 by 0 there); other rows are normalised to sum 1 before I is added."""
    relevance = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    assert torch.equal(normalised(relevance), torch.tensor([[[1.0, 0.0], [0.75, 1.25]]]))


@pytest.fixture(scope="module", params=["vqa_shapes_single", "vqa_shapes_dual"])
def vqa(request):
    torch.manual_seed(0)
    net = create_model(request.param).eval()
    data = shapes_vqa(16, seed=5)
    model = wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3)
    return model, model.normalize(data.images), list(data.questions)


def test_batch_equals_singles(vqa):
    model, x, questions = vqa
    together = vitx.explain(model, x, text=questions, normalize=False)
    for i in range(0, 16, 5):
        alone = vitx.explain(model, x[i:i + 1], text=questions[i:i + 1], normalize=False)
        assert torch.allclose(together.token_maps[i], alone.token_maps[0], atol=1e-6, rtol=1e-4)
        assert torch.allclose(together.text_maps[i], alone.text_maps[0], atol=1e-6, rtol=1e-4)
    assert together.text_tokens[0][0] == "[CLS]" and len(together.text_tokens) == 16


def captured_attentions(monkeypatch):
    """Replace torch's fused attention by softmax(q kᵀ scale + mask) v that keeps each A, in call order."""
    kept = []

    def attend(q, k, v, attn_mask=None, **_):
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        attention = scores.softmax(-1)
        attention.retain_grad()
        kept.append(attention)
        return attention @ v
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", attend)
    return kept


def gradient_cams(kept):
    """Ā = E_h[(∇A ⊙ A)⁺] of one pair per captured attention (None where no gradient reached it)."""
    return [(a.grad * a).clamp(min=0)[0].mean(0).detach() if a.grad is not None else None for a in kept]


def authors_maps(model, x, text, monkeypatch):
    """One pair at a time, as Chefer et al.'s ExplanationGenerator (:func:`authors_rows`). Returns (image, text) rows."""
    kept = captured_attentions(monkeypatch)
    logits = model.net(x, text.ids, text.mask)
    logits[0, logits[0].argmax()].backward()
    cfg = model.net.cfg
    layers = None if cfg.streams == "single" else (cfg.text_layers, cfg.image_layers, cfg.cross_layers)
    return authors_rows(gradient_cams(kept), text.ids.shape[1], layers)


def authors_rows(cams, text_length, layers=None, head=0):
    """Chefer et al.'s update order on one pair's Ā per attention, in forward order: LXMERT's for two streams
    (``layers`` = text, image and cross-modality layer counts: language layers, vision layers, then per cross layer
    both co-attentions from the same state, language self, vision self; the last layer's text side only),
    VisualBERT's R += Ā R for one stream (``layers`` None, text then image tokens). Returns the (image, text) rows of
    the token the head reads (``head``), its own text entry and [CLS]'s 0."""
    def eye(n):
        return torch.eye(n, dtype=cams[0].dtype)

    def bar(r):
        r = r - eye(r.shape[0])
        return r / r.sum(-1, keepdim=True) + eye(r.shape[0])
    L = text_length
    if layers is None:
        r = eye(cams[0].shape[0])
        for cam in cams:
            r = r + cam @ r
        row = r[head].clone()
        row[[0, head]] = 0
        return row[L:], row[:L]
    t, v, x = layers
    R = cams[t + v].shape[-1]
    r_tt, r_ii, r_ti, r_it = eye(L), eye(R), torch.zeros(L, R), torch.zeros(R, L)
    for cam in cams[:t]:
        r_tt, r_ti = r_tt + cam @ r_tt, r_ti + cam @ r_ti
    for cam in cams[t:t + v]:
        r_ii, r_it = r_ii + cam @ r_ii, r_it + cam @ r_it
    cross = [cams[t + v + 4 * j: t + v + 4 * j + 4] for j in range(x)]
    for j, (ti, it, tt, ii) in enumerate(cross):
        add_ti, add_tt = bar(r_tt).T @ ti @ bar(r_ii), ti @ r_it
        if j == len(cross) - 1:
            r_ti, r_tt = r_ti + add_ti, r_tt + add_tt
            r_tt, r_ti = r_tt + tt @ r_tt, r_ti + tt @ r_ti
            break
        add_it, add_ii = bar(r_ii).T @ it @ bar(r_tt), it @ r_ti
        r_ti, r_tt, r_it, r_ii = r_ti + add_ti, r_tt + add_tt, r_it + add_it, r_ii + add_ii
        r_tt, r_ti = r_tt + tt @ r_tt, r_ti + tt @ r_ti
        r_ii, r_it = r_ii + ii @ r_ii, r_it + ii @ r_it
    r_tt[head, [0, head]] = 0
    return r_ti[head], r_tt[head]


def test_generic_attention_equals_the_authors_order(vqa, monkeypatch):
    model, x, questions = vqa
    exp = vitx.explain(model, x[:4], text=questions[:4], normalize=False)
    text = model.encode_text(questions[:4])
    for i in range(4):
        n = int(text.mask[i].sum())    # the authors run one unpadded question at a time
        alone = Text(text.ids[i:i + 1, :n], text.mask[i:i + 1, :n], text.tokens[i:i + 1])
        with monkeypatch.context() as patch:
            image, words = authors_maps(model, x[i:i + 1], alone, patch)
        scale = image.abs().max()
        assert torch.allclose(exp.token_maps[i].flatten() / scale, image / scale, atol=1e-5)
        assert torch.allclose(exp.text_maps[i, :n] / scale, words / scale, atol=1e-5)
        assert not exp.text_maps[i, n:].any()


def test_a_vit_is_the_one_stream_case():
    """On a ViT the site walk is the self-attention rule alone: R equals generic-attention's."""
    from vitx.methods.attention import generic_relevance
    from vitx.methods.bimodal import gradient_weighted
    model = vitx.load_model("shapes-vit")
    x = model.normalize(vitx.data.shapes(4, seed=3).images)
    with vitx.trace(model, tokens=False) as tr:
        logits = model(x)
    gradients = torch.autograd.grad(logits.max(-1).values.sum(), [r.attention for r in tr.sites])
    walked = propagate(tr.sites, gradient_weighted(tr.sites, gradients))
    assert list(walked) == [("image", "image")]
    assert torch.allclose(walked["image", "image"], generic_relevance([r.attention.detach() for r in tr.sites],
                                                                      list(gradients)), atol=1e-6)


def test_frozen_two_stream_model():
    """With frozen parameters the text stream's first blocks see only the word embeddings, which the tap makes
    differentiable as it does the images: the maps are those of the unfrozen model."""
    torch.manual_seed(0)
    net = create_model("vqa_shapes_dual").eval()
    data = shapes_vqa(3, seed=2)
    model = wrap(net)
    x, questions = model.normalize(data.images), list(data.questions)
    free = vitx.explain(model, x, text=questions, normalize=False)
    net.requires_grad_(False)
    for method in ("generic-attention", "transformer-attribution"):
        frozen = vitx.explain(model, x, method, text=questions, normalize=False)
        assert torch.isfinite(frozen.text_maps).all()
    frozen = vitx.explain(model, x, text=questions, normalize=False)
    assert torch.allclose(frozen.text_maps, free.text_maps) and torch.allclose(frozen.token_maps, free.token_maps)
