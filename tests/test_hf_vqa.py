"""Hugging Face VisualBERT and LXMERT question answerers through the tap (random weights, tiny configurations): region
input, the tap leaves them as they were, its sites are the models' own attentions, generic-attention equals the
authors' per-pair order, region deletion, and bad input."""
import numpy as np
import pytest
import torch

import vitx
from reference import jitter, snapshot
from test_bimodal import authors_rows, gradient_cams
from vitx.model import wrap
from vitx.models import create_model
from vitx.text import Text

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "ball", "?", "where", "cube",
         "left", "of", "red", "how", "many", "##s"]
QUESTIONS = ["what color is the ball?", "where is the cube", "how many red cubes left of the ball?"]
FEATURES, REGIONS = 12, 5
SMALL = dict(vocab_size=len(WORDS), hidden_size=32, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=16)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return transformers.BertTokenizer(vocab=str(vocab))


def visualbert():
    torch.manual_seed(0)
    config = transformers.VisualBertConfig(**SMALL, num_hidden_layers=2, visual_embedding_dim=FEATURES, num_labels=4)
    return jitter(transformers.VisualBertForQuestionAnswering(config))


def lxmert():
    torch.manual_seed(0)
    config = transformers.LxmertConfig(**SMALL, l_layers=2, r_layers=1, x_layers=2, visual_feat_dim=FEATURES,
                                       num_qa_labels=4)
    return jitter(transformers.LxmertForQuestionAnswering(config))


@pytest.fixture(scope="module", params=["visualbert", "lxmert"])
def vqa(request, tokenizer):
    """(model, regions x, its raw net's forward on (x, Text))."""
    net = visualbert() if request.param == "visualbert" else lxmert()
    model = wrap(net, tokenizer=tokenizer)
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, REGIONS, FEATURES, generator=generator)
    if request.param == "visualbert":
        return model, model.regions(features), lambda x, t: net(input_ids=t.ids, attention_mask=t.mask.long(),
                                                                 visual_embeds=x).logits
    boxes = torch.rand(3, REGIONS, 4, generator=generator)
    return model, model.regions(features, boxes), lambda x, t: net(
        input_ids=t.ids, attention_mask=t.mask.long(), visual_feats=x[..., :FEATURES],
        visual_pos=x[..., FEATURES:]).question_answering_score


def test_config_tokens_and_layout(vqa):
    model, x, _ = vqa
    c = model.config
    assert (c.kind, c.input, c.text_length, c.num_classes) == ("vqa", "regions", 16, 4)
    assert c.class_names == (("LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3") if "Bert" in type(model.net).__name__
                             else ("class 0", "class 1", "class 2", "class 3"))
    text = model.encode_text(QUESTIONS)
    assert text.tokens[1] == ("[CLS]", "where", "is", "the", "cube", "[SEP]")
    assert text.mask.sum(1).tolist() == [8, 6, 12] and not text.ids[1, 6:].any()
    layout = model.layout(x)
    assert (layout.grid, layout.num_prefix, layout.cls_index) == ((1, REGIONS), 0, None)


def test_tap_leaves_the_model_as_it_was(vqa):
    model, x, raw = vqa
    text = model.encode_text(QUESTIONS)
    before, expected = snapshot(model.net), raw(x, text)
    assert torch.allclose(model(x, text), expected, atol=1e-6)
    with vitx.trace(model) as tr:
        tapped = model(x, text)
        assert snapshot(model.net) != before         # the attention forwards are patched while it is open
    assert torch.allclose(tapped, expected, atol=1e-6) and len(tr.sites) == len(model.adapter.sites())
    assert snapshot(model.net) == before and torch.allclose(raw(x, text), expected)
    with pytest.raises(RuntimeError, match="inside"):
        with vitx.trace(model):
            model(x, text)
            raise RuntimeError("inside")
    assert snapshot(model.net) == before
    assert not any({"forward", "cross_att"} & set(m.__dict__) for m in model.net.modules())


def test_sites_are_the_models_own_attentions(vqa):
    """In forward order, each site's attention equals the one transformers returns with output_attentions=True
    (LXMERT returns the language, vision and text→image ones; its image→text ones it keeps to itself)."""
    model, x, _ = vqa
    text = model.encode_text(QUESTIONS)
    with vitx.trace(model) as tr:
        model(x, text)
    names = [r.site.name for r in tr.sites]
    assert names == [site.name for site in model.adapter.sites()]
    recorded = {r.site.name: r.attention for r in tr.sites}
    net = model.net
    if "Bert" in type(net).__name__:
        own = net(text.ids, text.mask.long(), visual_embeds=x, output_attentions=True).attentions
        assert names == ["encoder.layer.0", "encoder.layer.1"]
        pairs = zip(own, names)
    else:
        out = net(text.ids, x[..., :FEATURES], x[..., FEATURES:], text.mask.long(), output_attentions=True)
        assert names == ["layer.0", "layer.1", "r_layers.0"] + [f"x_layers.{i}.{s}" for i in range(2) for s in (
            "text_cross", "image_cross", "lang_self_att", "visn_self_att")]
        pairs = [*zip(out.language_attentions, ["layer.0", "layer.1"]), (out.vision_attentions[0], "r_layers.0"),
                 *zip(out.cross_encoder_attentions, ["x_layers.0.text_cross", "x_layers.1.text_cross"])]
        assert [r.site.block for r in tr.sites][3:] == [0, 0, 2, 1, 1, 1, 3, 2]
        assert recorded["x_layers.0.image_cross"].shape == (3, 2, REGIONS, text.ids.shape[1])
    for attention, name in pairs:
        assert torch.allclose(recorded[name], attention, atol=1e-6), name


def test_projected_values_are_per_key(vqa):
    """Each site's values after its output projection (LXMERT's two co-attention directions share one), (B, keys, D)."""
    model, x, _ = vqa
    with vitx.trace(model, projected_values=True) as tr:
        model(x, model.encode_text(QUESTIONS))
    assert len(tr.projected_values) == len(tr.sites)
    for recorded, values in zip(tr.sites, tr.projected_values):
        assert values.shape == (3, recorded.attention.shape[-1], 32)


def captured_softmax(monkeypatch):
    """Keep every attention transformers computes (its softmax), in call order, with its gradient."""
    kept, softmax = [], torch.nn.functional.softmax

    def keep(scores, dim=None, **kwargs):
        attention = softmax(scores, dim=dim, **kwargs)
        attention.retain_grad()
        kept.append(attention)
        return attention
    monkeypatch.setattr(torch.nn.functional, "softmax", keep)
    return kept


def test_generic_attention_equals_the_authors_order(vqa, monkeypatch):
    """Each pair alone, unpadded, through a softmax hook and the authors' update order (test_bimodal.authors_rows):
    VisualBERT's rows are those of the token its head reads (the one before [SEP]), LXMERT's those of [CLS]."""
    model, x, raw = vqa
    exp = vitx.explain(model, x, text=QUESTIONS, normalize=False)
    assert exp.maps.shape == exp.token_maps.shape == (3, 1, REGIONS) and torch.equal(exp.maps, exp.token_maps)
    assert exp.images is None and exp.text_maps.shape == (3, 12)
    text = model.encode_text(QUESTIONS)
    cfg = model.net.config
    layers = None if "Bert" in type(model.net).__name__ else (cfg.l_layers, cfg.r_layers, cfg.x_layers)
    for i in range(3):
        n = int(text.mask[i].sum())
        alone = Text(text.ids[i:i + 1, :n], text.mask[i:i + 1, :n], text.tokens[i:i + 1])
        with monkeypatch.context() as patch:
            kept = captured_softmax(patch)
            logits = raw(x[i:i + 1], alone)
            logits[0, logits[0].argmax()].backward()
        assert int(exp.targets[i]) == int(logits[0].argmax())
        image, words = authors_rows(gradient_cams(kept), n, layers, head=n - 2 if layers is None else 0)
        scale = image.abs().max()
        assert scale > 0
        assert torch.allclose(exp.token_maps[i, 0] / scale, image / scale, atol=1e-5)
        assert torch.allclose(exp.text_maps[i, :n] / scale, words / scale, atol=1e-5)
        assert not exp.text_maps[i, n:].any()


def input_gradients(model, raw, x, text, targets, scale=1.0):
    """(∂y_t/∂x, ∂y_t/∂e, e) of the raw net at regions x with its word embeddings e scaled by ``scale``."""
    words, embedding = [], model.adapter.text_embedding()

    def hook(_module, _inputs, out):
        words.append((scale * out.detach()).requires_grad_(True))
        return words[-1]
    handle = embedding.register_forward_hook(hook)
    try:
        x = x.clone().requires_grad_(True)
        logits = raw(x, text)
    finally:
        handle.remove()
    return (*torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), [x, words[0]]),
            embedding(text.ids).detach())


def test_gradient_baselines_per_region(vqa):
    """Saliency: the largest |∂y_t/∂x| over each region's values, and over each word embedding's dimensions;
    integrated gradients along (0, 0) → (x, e), zero regions and zero word embeddings, by Gauss–Legendre
    quadrature written out; each text map's [CLS] entry is 0."""
    model, x, raw = vqa
    text = model.encode_text(QUESTIONS)
    exp = vitx.explain(model, x, text=QUESTIONS, method="saliency", normalize=False)
    by_x, by_words, _ = input_gradients(model, raw, x, text, exp.targets)
    assert exp.maps.shape == (3, 1, REGIONS) and exp.token_maps is None
    assert torch.allclose(exp.maps[:, 0], by_x.abs().amax(-1), atol=1e-6)
    assert torch.allclose(exp.text_maps[:, 1:], (by_words.abs().amax(-1) * text.mask)[:, 1:], atol=1e-6)
    exp = vitx.explain(model, x, text=QUESTIONS, method="integrated-gradients", steps=4, normalize=False)
    nodes, weights = np.polynomial.legendre.leggauss(4)
    image, words = 0, 0
    for node, weight in zip((nodes + 1) / 2, weights / 2):
        by_x, by_words, embedded = input_gradients(model, raw, float(node) * x, text, exp.targets, float(node))
        image, words = image + float(weight) * by_x, words + float(weight) * by_words
    assert torch.allclose(exp.maps[:, 0], (x * image).sum(-1), atol=1e-6)
    assert torch.allclose(exp.text_maps[:, 1:], ((embedded * words).sum(-1) * text.mask)[:, 1:], atol=1e-6)
    assert not exp.text_maps[:, 0].any() and exp.maps.abs().amax() > 0 and exp.text_maps.abs().amax() > 0
    with pytest.raises(vitx.VitxError, match="a region model's baseline is 'zeros'"):
        vitx.explain(model, x, text=QUESTIONS, method="integrated-gradients", baseline=0.5)


def test_raw_attention_reads_the_head_token(vqa):
    model, x, _ = vqa
    text = model.encode_text(QUESTIONS)
    exp = vitx.explain(model, x, text=QUESTIONS, method="raw-attention", normalize=False)
    with vitx.trace(model) as tr:
        model(x, text)
    last = [r for r in tr.sites if r.site.key in ("joint", "image") and r.site.query in ("joint", "text")][-1]
    head = text.mask.sum(1) - 2 if "Bert" in type(model.net).__name__ else torch.zeros(3, dtype=torch.long)
    row = last.attention.detach().mean(1)[torch.arange(3), head]
    assert torch.allclose(exp.token_maps[:, 0], row[:, -REGIONS:], atol=1e-6)


def test_deleting_regions_equals_the_subset(vqa):
    model, x, raw = vqa
    text = model.encode_text(QUESTIONS)
    keep = torch.tensor([[0, 2, 4], [4, 1, 3], [2, 3, 0]])
    subset = torch.stack([x[i, keep[i]] for i in range(3)])
    assert torch.allclose(model(x, text, keep), raw(subset, text), atol=1e-6)
    assert not torch.allclose(model(x, text, keep), model(x, text), atol=1e-3)


def test_frozen_model_and_loading_from_a_directory(tokenizer, tmp_path):
    """load_model('hf:DIR') finds the tokenizer saved beside the model; explain works on frozen weights."""
    net = visualbert()
    net.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = vitx.load_model(f"hf:{tmp_path}")
    model.net.requires_grad_(False)
    x = model.regions(torch.randn(2, REGIONS, FEATURES))
    exp = vitx.explain(model, x, text=QUESTIONS[:2])
    assert exp.text_tokens[0] == ("[CLS]", "what", "color", "is", "the", "ball", "?", "[SEP]")
    assert torch.allclose(exp.logits, wrap(net, tokenizer=tokenizer)(x, model.encode_text(QUESTIONS[:2])), atol=1e-6)


def test_bad_input_is_one_line(vqa, tokenizer):
    model, x, _ = vqa
    lxmert_model = "Lxmert" in type(model.net).__name__
    width = FEATURES + 4 * lxmert_model
    before = snapshot(model.net)
    cases = [(lambda: model.regions(torch.randn(2, REGIONS, FEATURES + 1), torch.rand(2, REGIONS, 4)),
              rf"takes features as a \(B, R, {FEATURES}\) tensor of R >= 1 regions, got \(2, 5, 13\)"),
             (lambda: model.regions(torch.randn(2, 0, FEATURES), torch.rand(2, 0, 4)), "R >= 1 regions"),
             (lambda: model.regions(torch.ones(2, REGIONS, FEATURES, dtype=torch.long), torch.rand(2, REGIONS, 4)),
              "features must be floating point"),
             (lambda: vitx.explain(model, x), "pass one question per image as text="),
             (lambda: vitx.explain(model, x, text=QUESTIONS[:2]), "got 2 questions for 3 images"),
             (lambda: vitx.explain(model, torch.randn(3, 3, 8, 8), text=QUESTIONS),
              rf"takes its input as a \(B, R, {width}\) tensor .* got \(3, 3, 8, 8\): build it with model.regions"),
             (lambda: vitx.explain(model, x.masked_fill(x > 2, float("nan")), text=QUESTIONS),
              "its input has NaN or infinite values"),
             (lambda: vitx.explain(model, x, text=["", "a", "b"]), "question 0 is empty"),
             (lambda: vitx.explain(model, x, text=["what " * 20] * 3), "question 0 has 22 tokens .* more than the "
                                                                       "model's 16"),
             (lambda: model.encode_text(["what zebra is it"], unknown="error"),
              r"words outside the vocabulary: \['it', 'zebra'\]"),
             (lambda: wrap(model.net)(x, wrap(model.net).encode_text(["what"])), "needs the tokenizer of its questions"),
             (lambda: model.preprocess(torch.rand(1, 3, 8, 8)), "reads detector regions, not images"),
             (lambda: vitx.explain(model, x, text=QUESTIONS, method="attnlrp"), "does not apply to 'vqa' models")]
    if lxmert_model:
        cases.append((lambda: model.regions(torch.randn(2, REGIONS, FEATURES)), r"reads each region's box too"))
    else:
        cases.append((lambda: model.regions(torch.randn(2, REGIONS, FEATURES), torch.rand(2, REGIONS, 4)),
                      "reads region features only: pass no boxes"))
    for call, message in cases:
        with pytest.raises(vitx.VitxError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    assert snapshot(model.net) == before
    with pytest.warns(UserWarning, match=r"outside the vocabulary, encoded as \[UNK\]: \['zebra'\]"):
        assert model.encode_text(["what zebra"]).tokens[0] == ("[CLS]", "what", "[UNK]", "[SEP]")
    vit = create_model("vit_small_patch16_224", image_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2,
                       num_classes=2)
    with pytest.raises(vitx.VitxError, match="VisionTransformer takes no tokenizer"):
        wrap(vit, tokenizer=tokenizer)
    with pytest.raises(vitx.VitxError, match="reads images .*not regions"):
        wrap(vit).regions(torch.randn(1, 2, 3))
