"""The baselines on bi-modal models against Chefer et al.'s formulas, written here pair by pair as their code runs
them: one unpadded question, attention captured by an explicit softmax in place of the model's fused attention."""
import numpy as np
import pytest
import torch

import vitx
from vitx.data import shapes_vqa
from vitx.errors import VitxError
from vitx.model import wrap
from vitx.models import create_model, vqa

SMALL = {"vqa_shapes_single": dict(depth=3), "vqa_shapes_dual": dict(text_layers=1, image_layers=2, cross_layers=2)}
TOKEN_METHODS = ["raw-attention", "rollout", "attention-gradcam"]
PIXEL_METHODS = {"saliency": {}, "integrated-gradients": dict(steps=4, internal_batch_size=8)}


@pytest.fixture(scope="module")
def data():
    return shapes_vqa(n=8, seed=0, image_size=64)


@pytest.fixture(scope="module", params=sorted(SMALL))
def model(request):
    torch.manual_seed(0)
    net = create_model(request.param, **SMALL[request.param])
    with torch.no_grad():       # larger weights than the initialisation's, so attention and gradients are not flat
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return wrap(net.eval())


class Capture:
    """softmax(q kᵀ · scale + mask) v with A kept (retain_grad), in call order: the model's forward order."""

    def __init__(self):
        self.attentions = []

    def __call__(self, q, k, v, attn_mask=None):
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        attention = scores.softmax(-1)
        attention.retain_grad()
        self.attentions.append(attention)
        return attention @ v


TARGET = 3   # an answer whose maps are not all clamped to 0 on these pairs of the untrained nets


def run_pair(model, x, ids, monkeypatch, scale=None):
    """One pair (x (1, 3, H, W), ids (1, n) unpadded) through the plain net, answer TARGET backpropagated: logits,
    the attentions (1, heads, Nq, Nk) as a Capture holds them, the word embeddings (times ``scale`` when given)
    with their gradient kept."""
    net, words = model.net, []

    def hook(_module, _inputs, output):
        output = output if scale is None else output * scale
        output.retain_grad()
        words.append(output)
        return output

    capture, handle = Capture(), net.word_embed.register_forward_hook(hook)
    with monkeypatch.context() as patch:
        patch.setattr(vqa.F, "scaled_dot_product_attention", capture)
        logits = net(x, ids, torch.ones_like(ids))
    handle.remove()
    logits[0, TARGET].backward()
    return logits, capture.attentions, words[0]


def named_sites(model, attentions):
    """{"text", "image", "joint": self-attention sites in order, "across": text→image co-attentions}."""
    cfg = model.net.cfg
    if cfg.streams == "single":
        return {"joint": attentions}
    t, i = cfg.text_layers, cfg.image_layers
    cross = attentions[t + i:]
    return {"text": attentions[:t] + cross[2::4], "image": attentions[t:t + i] + cross[3::4], "across": cross[0::4]}


def roll(cams, normalise):
    """The authors' compute_rollout_attention: Π (cam + I), rows normalised (LXMERT) or not (VisualBERT)."""
    eye = torch.eye(cams[0].shape[-1])
    mixed = [(c + eye) / (c + eye).sum(-1, keepdim=True) if normalise else c + eye for c in cams]
    result = mixed[0]
    for m in mixed[1:]:
        result = m @ result
    return result


def gradcam(attention):
    """The authors' gradcam(cam, grad): per head the mean of the gradient over the matrix."""
    weights = attention.grad[0].mean((1, 2), keepdim=True)
    return (attention.detach()[0] * weights).mean(0).clamp(min=0)


def mean(attention):
    return attention.detach()[0].mean(0)


def reference(model, method, x, ids, monkeypatch):
    """(image (gh, gw), text (n,)) for one pair by the authors' formulas."""
    _, attentions, _ = run_pair(model, x, ids, monkeypatch)
    n, sites = ids.shape[1], named_sites(model, attentions)
    if "joint" in sites:
        last = sites["joint"][-1]
        matrix = {"raw-attention": lambda: mean(last), "attention-gradcam": lambda: gradcam(last),
                  "rollout": lambda: roll([mean(a) for a in sites["joint"]], normalise=False)}[method]()
        text, image = matrix[0, :n].clone(), matrix[0, n:]
    else:
        text_self, across = sites["text"][-1], sites["across"][-1]
        if method == "raw-attention":
            tt, ti = mean(text_self), mean(across)
        elif method == "attention-gradcam":
            tt, ti = gradcam(text_self), gradcam(across)
        else:
            texts, images = [mean(a) for a in sites["text"]], [mean(a) for a in sites["image"]]
            ti = roll(texts[:-1], True).t() @ mean(across) @ roll(images[:-1], True)
            tt = roll(texts, True)
        text, image = tt[0].clone(), ti[0]
    text[0] = 0
    return image.view(model.net.grid_size), text


def gradient_reference(model, method, x, ids, monkeypatch, steps=4):
    """(image (H, W), text (n,)) for one pair: |∇| maxed over channels and dims, or IG along (x', 0) → (x, e)."""
    if method == "saliency":
        x = x.clone().requires_grad_(True)
        _, _, words = run_pair(model, x, ids, monkeypatch)
        image, text = x.grad[0].abs().amax(0), words.grad[0].abs().amax(-1)
    else:
        start = model.normalize(torch.zeros_like(x))
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        image, text = 0, 0
        for node, weight in zip((nodes + 1) / 2, weights / 2):
            point = (start + float(node) * (x - start)).requires_grad_(True)
            _, _, words = run_pair(model, point, ids, monkeypatch, scale=float(node))
            image = image + float(weight) * point.grad[0]
            text = text + float(weight) * words.grad[0]
        image = ((x - start)[0] * image).sum(0)
        text = (model.net.word_embed(ids)[0].detach() * text).sum(-1)
    text = text.clone()
    text[0] = 0
    return image, text


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("method", TOKEN_METHODS + list(PIXEL_METHODS))
def test_maps_follow_the_authors_formulas(model, data, method, monkeypatch):
    pairs = 3
    x, questions = model.normalize(data.images[:pairs]), list(data.questions[:pairs])
    exp = vitx.explain(model, x, text=questions, method=method, target=TARGET, normalize=False,
                       **PIXEL_METHODS.get(method, {}))
    encoded = model.encode_text(questions)
    images = exp.token_maps if method in TOKEN_METHODS else exp.maps
    peaks = []
    for i in range(pairs):
        n = int(encoded.mask[i].sum())
        assert not encoded.mask[i, n:].any() and (exp.text_maps[i, n:] == 0).all()
        find = reference if method in TOKEN_METHODS else gradient_reference
        image, text = find(model, method, x[i:i + 1], encoded.ids[i:i + 1, :n], monkeypatch)
        close(images[i], image)
        close(exp.text_maps[i, :n], text)
        peaks.append((float(image.abs().max()), float(text.abs().max())))
    assert min(max(column) for column in zip(*peaks)) > 0, f"flat references check nothing: {peaks}"


@pytest.mark.parametrize("method", TOKEN_METHODS + list(PIXEL_METHODS))
def test_batch_equals_singles(model, data, method):
    x, questions = model.normalize(data.images), list(data.questions)
    params = PIXEL_METHODS.get(method, {})
    together = vitx.explain(model, x, text=questions, method=method, normalize=False, batch_size=8, **params)
    alone = vitx.explain(model, x, text=questions, method=method, normalize=False, batch_size=1, **params)
    close(together.maps, alone.maps)
    close(together.text_maps, alone.text_maps)
    assert not model.net.word_embed._forward_hooks


@pytest.mark.parametrize("method, params, word", [
    ("saliency", {}, "reads images only"), ("raw-attention", {}, "question per image"),
    ("rollout", {"head_fusion": "max"}, "head_fusion='mean'"), ("attention-gradcam", {"block": 0}, "block=-1"),
    ("lrp", {}, "does not apply to 'vqa' models: it returns the relevance of the pixels alone")])
def test_refused(model, data, method, params, word):
    x = model.normalize(data.images[:2])
    if word == "reads images only":
        torch.manual_seed(0)
        image_only = wrap(create_model("vitx_shapes"))
        with pytest.raises(VitxError, match=word):
            vitx.explain(image_only, x, text=["what colour is it?"] * 2, method=method)
        return
    text = None if word == "question per image" else list(data.questions[:2])
    with pytest.raises(VitxError, match=word):
        vitx.explain(model, x, text=text, method=method, **params)
    assert not model.net.word_embed._forward_hooks
