"""Hugging Face CLIPModel / SiglipModel and open_clip's CLIP through vitx (random weights, tiny configurations): the
similarity is the model's own, generic-attention's maps equal Chefer et al.'s CLIP rule computed pair by pair from
the models' own attention probabilities (transformers' eager attention, nn.MultiheadAttention's weights), the
gradient methods run, bad prompts are refused in one line, the tap leaves the models as they were, and
load_model("hf:DIR") / load_model("open_clip:ARCH", weights=FILE) read local files."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

import vitx
from reference import close, jitter, snapshot
from vitx.model import wrap

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

WORDS = ["a", "photo", "of", "red", "blue", "star", "circle", "and"]
PROMPTS = ["a red star", "a photo of a blue circle", "a star"]
CONTEXT, SIZE = 12, 32
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2)
OPEN_CLIP_TINY = {"embed_dim": 16,
                  "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                  "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A CLIP BPE tokenizer over WORDS: every word merged from its letters, then the special tokens: start and end of
    text (ids 52, 53) and a padding token of the largest id (54), so that CLIP's two rules for its pooled token (the
    first end of text; the largest id, for a config with the legacy eos_token_id 2) differ on padded prompts."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab, merges = {}, {}
    for letter in sorted(set("".join(WORDS))):
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    for word in WORDS:
        pieces, merged = [*word[:-1], word[-1] + "</w>"], word[0]
        for piece in pieces[1:]:
            merges[f"{merged} {piece}"] = None
            merged += piece
            vocab.setdefault(merged, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>", "<|pad|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|pad|>")


def hf_net(kind: str, tokenizer):
    torch.manual_seed(0)
    text = dict(**SMALL, vocab_size=len(tokenizer), max_position_embeddings=CONTEXT, bos_token_id=52,
                eos_token_id=2 if kind == "clip-legacy-eos" else 53, pad_token_id=54)
    vision = dict(**SMALL, image_size=SIZE, patch_size=8)
    if kind == "siglip":
        return jitter(transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)))
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return jitter(transformers.CLIPModel(config))


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    """open_clip's registry knows the architecture "vitx-tiny" (OPEN_CLIP_TINY)."""
    path = tmp_path_factory.mktemp("open_clip") / "vitx-tiny.json"
    path.write_text(json.dumps(OPEN_CLIP_TINY))
    open_clip.add_model_config(path)
    return "vitx-tiny"


def open_clip_net(arch):
    torch.manual_seed(0)
    return jitter(open_clip.create_model(arch, pretrained=None))


class HFReference:
    """The model's own outputs, one (image, prompt) pair at a time: logits_per_image, and each tower's attention
    probabilities from transformers' eager attention (output_attentions)."""

    def __init__(self, net, tokenizer):
        self.net, self.tokenizer = copy.deepcopy(net), tokenizer
        self.net.set_attn_implementation("eager")
        self.siglip = isinstance(net, transformers.SiglipModel)

    def encode(self, prompts):
        padding = dict(padding="max_length", max_length=CONTEXT) if self.siglip else dict(padding=True)
        return self.tokenizer(prompts, return_tensors="pt", **padding)

    def logits(self, x, prompts):
        with torch.no_grad():
            return self.net(**self.encode(prompts), pixel_values=x).logits_per_image

    def pair(self, image, prompts, p):
        """(score, image-tower attentions, text-tower attentions, text ids (1, L), pooled column) of the pair (image,
        prompt p), the prompt padded as in the batch of ``prompts`` (a legacy CLIP config pools at a padding token)."""
        inputs = {key: value[p:p + 1] for key, value in self.encode(prompts).items()}
        out = self.net(**inputs, pixel_values=image[None], output_attentions=True, output_hidden_states=True)
        net = self.net
        self.legrad_inputs = (out.vision_model_output.hidden_states[1:], out.text_embeds,
                              lambda pooled: net.visual_projection(net.vision_model.post_layernorm(pooled)))
        ids, eos = inputs["input_ids"], self.net.config.text_config.eos_token_id
        pooled = ids.shape[1] - 1 if self.siglip else int(ids.argmax() if eos == 2 else (ids[0] == eos).nonzero()[0])
        return (out.logits_per_image[0, 0], out.vision_model_output.attentions, out.text_model_output.attentions,
                ids, pooled)


class OpenClipReference:
    """open_clip's CLIP, one pair at a time, each nn.MultiheadAttention's output recomputed by a forward hook from
    explicit per-head probabilities softmax(q kᵀ / √d + attn_mask), kept on the graph."""

    def __init__(self, net):
        self.net, self.tokenizer = net, open_clip.get_tokenizer("vitx-tiny")

    def logits(self, x, prompts):
        with torch.no_grad():
            image, text, scale = self.net(x, self.tokenizer(prompts))
        return scale * image @ text.T

    def pair(self, image, prompts, p):
        found, handles = {}, []

        def keep(tower, module, args, kwargs, _output):
            tokens, mask = args[0], kwargs.get("attn_mask")
            B, N, D = tokens.shape
            q, k, v = (t.view(B, N, module.num_heads, -1).transpose(1, 2)
                       for t in F.linear(tokens, module.in_proj_weight, module.in_proj_bias).chunk(3, -1))
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + (0 if mask is None else mask)
            found.setdefault(tower, []).append(scores.softmax(-1))
            return module.out_proj((found[tower][-1] @ v).transpose(1, 2).reshape(B, N, D)), None
        towers = {"image": self.net.visual.transformer, "text": self.net.transformer}
        for tower, transformer in towers.items():
            handles += [b.attn.register_forward_hook(lambda *a, t=tower: keep(t, *a), with_kwargs=True)
                        for b in transformer.resblocks]
        handles += [b.register_forward_hook(lambda m, i, o: found.setdefault("tokens", []).append(o))
                    for b in self.net.visual.transformer.resblocks]
        try:
            ids = self.tokenizer([prompts[p]])
            image_features, text_features, scale = self.net(image[None], ids)
        finally:
            for handle in handles:
                handle.remove()
        visual = self.net.visual
        self.legrad_inputs = (found["tokens"], text_features, lambda pooled: visual.ln_post(pooled) @ visual.proj)
        return scale * (image_features * text_features).sum(), found["image"], found["text"], ids, int(ids.argmax())


@pytest.fixture(scope="module", params=["clip", "clip-legacy-eos", "siglip", "open_clip"])
def pairs(request, tokenizer, tiny_arch):
    """(model, images x, its reference)."""
    if request.param == "open_clip":
        net = open_clip_net(tiny_arch)
        model, reference = wrap(net), OpenClipReference(net)
    else:
        net = hf_net(request.param, tokenizer)
        model, reference = wrap(net, tokenizer=tokenizer), HFReference(net, tokenizer)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return model, x, reference


def chefer_rows(attentions, score, start, reader):
    """Chefer et al.'s CLIP rule on one tower: R = I, R += E_h[(∇A ⊙ A)⁺] R over blocks start..; R's row
    ``reader``."""
    attentions = attentions[start:]
    gradients = torch.autograd.grad(score, attentions, retain_graph=True)
    relevance = torch.eye(attentions[0].shape[-1])
    for attention, gradient in zip(attentions, gradients):
        relevance = relevance + (gradient * attention).clamp(min=0).mean(1)[0] @ relevance
    return relevance[reader]


def test_similarity_is_the_models_own(pairs):
    model, x, reference = pairs
    assert model.image_text and model.config.text_length == CONTEXT
    text = model.encode_text(PROMPTS)
    expected = reference.logits(x, PROMPTS)
    close(model.adapter.similarities(x, text).detach(), expected)
    rows = torch.cartesian_prod(torch.arange(2), torch.arange(3))
    close(model(x[rows[:, 0]], text.select(rows[:, 1])).detach()[:, 0], expected.flatten())
    close(vitx.explain(model, x, text=PROMPTS, method="saliency").logits, expected.repeat_interleave(3, 0))


@pytest.mark.parametrize("start", [None, 0])
@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1]], ids=["padded", "unpadded"])
def test_generic_attention_is_chefers_clip_rule(pairs, start, prompts):
    """Without padding transformers leaves CLIP's causal mask to its attention implementation (sdpa's is_causal)."""
    model, x, reference = pairs
    if isinstance(model.net, transformers.SiglipModel):
        for method in ("generic-attention", "legrad"):
            with pytest.raises(vitx.VitxError, match="head reads 'map'-pooled tokens"):
                vitx.explain(model, x, text=prompts, method=method)
        return
    exp = vitx.explain(model, x, text=prompts, method="generic-attention", normalize=False,
                       start_layer=start, start_layer_text=start)
    grid = SIZE // 8
    for row, (i, p) in enumerate(exp.pairs.tolist()):
        score, image_attentions, text_attentions, ids, pooled = reference.pair(x[i], prompts, p)
        first = len(image_attentions) - 1 if start is None else start
        image = chefer_rows(image_attentions, score, first, 0)[1:].reshape(grid, grid)
        words = chefer_rows(text_attentions, score, first, pooled)
        words[[0, pooled]] = 0                       # vitx's text row: [start of text] and the reader left out
        length = int(exp.text_maps.shape[1])
        close(exp.token_maps[row], image.detach())
        close(exp.text_maps[row, :pooled + 1], words[:pooled + 1].detach())
        assert not exp.text_maps[row, pooled + 1:length].any()     # padding and what follows the pooled token


def test_legrad_is_the_authors_formula(pairs):
    """LeGrad's two last image blocks: ReLU(∂ cos(P(mean tokens_l), t) / ∂A_l) averaged over heads and query rows."""
    model, x, reference = pairs
    if isinstance(model.net, transformers.SiglipModel):
        return      # refused: see test_generic_attention_is_chefers_clip_rule
    exp = vitx.explain(model, x, text=PROMPTS, method="legrad", normalize=False)
    grid = SIZE // 8
    for row, (i, p) in enumerate(exp.pairs.tolist()):
        _, attentions, _, _, _ = reference.pair(x[i], PROMPTS, p)
        tokens, prompt, project = reference.legrad_inputs
        prompt, expected = F.normalize(prompt, dim=-1).detach(), 0
        for block in (len(attentions) - 2, len(attentions) - 1):
            feature = F.normalize(project(tokens[block].mean(1)), dim=-1)
            gradient, = torch.autograd.grad((feature * prompt).sum(), attentions[block], retain_graph=True)
            expected = expected + gradient.clamp(min=0).mean(1).mean(1)[0, 1:]
        close(exp.token_maps[row], expected.reshape(grid, grid).detach())


@pytest.mark.parametrize("method", ["saliency", "gradcam", "integrated-gradients"])
def test_gradient_methods_give_finite_maps(pairs, method):
    model, x, _ = pairs
    params = {"steps": 4} if method == "integrated-gradients" else {}
    exp = vitx.explain(model, x, text=PROMPTS, method=method, target=[0, 1], **params)
    assert exp.maps.shape == (2, SIZE, SIZE) and torch.isfinite(exp.maps).all() and exp.maps.amax() > 0
    assert exp.targets.tolist() == [0, 1]


def test_tokens_and_pooled_token(pairs):
    model, _, _ = pairs
    text = model.encode_text(PROMPTS)
    lengths = text.mask.sum(1).tolist()
    assert [len(t) for t in text.tokens] == lengths == [5, 8, 4]
    pooled = model.adapter.head_token(text).tolist()
    if isinstance(model.net, transformers.SiglipModel):
        assert text.ids.shape[1] == CONTEXT and pooled == [CONTEXT - 1] * 3
    elif isinstance(model.net, transformers.CLIPModel) and model.net.config.text_config.eos_token_id == 2:
        assert pooled == [5, 7, 4]                      # the largest id: the first padding token, or end of text
    else:
        assert pooled == [n - 1 for n in lengths]       # the end-of-text token
    assert text.tokens[1][1:-1] == ("a", "photo", "of", "a", "blue", "circle")
    assert text.tokens[2][0] in ("<|startoftext|>", "<start_of_text>")


@pytest.mark.parametrize("prompts, match", [
    ([" ".join(["star"] * CONTEXT)], f"prompt 0 has {CONTEXT + 2} tokens, more than the text tower's context of "
                                     f"{CONTEXT}"),
    (["a star", "  "], "prompt 1 is empty"),
    ([], "prompts must be a non-empty list of strings")])
def test_bad_prompts_are_refused(pairs, prompts, match):
    model, x, _ = pairs
    with pytest.raises(vitx.VitxError, match=match):
        model.encode_text(prompts)
    if prompts:
        with pytest.raises(vitx.VitxError, match=match):
            vitx.explain(model, x, text=prompts, method="saliency")


def test_tap_leaves_the_model_as_it_was_after_an_error(pairs):
    model, x, reference = pairs
    text = model.encode_text(PROMPTS[:2])
    before, expected = snapshot(model.net), model(x, text).detach()
    with pytest.raises(RuntimeError):
        with vitx.trace(model):
            model(x[:, :2], text)                    # two channels: the image tower fails mid-forward
    assert snapshot(model.net) == before
    close(model(x, text).detach(), expected)
    with pytest.raises(vitx.VitxError, match="keeps all image tokens"):
        model(x, text, keep=torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("kind, mean", [("clip", 0.48145466), ("siglip", 0.5)])
def test_hf_needs_its_tokenizer_and_loads_it_from_a_directory(tokenizer, tmp_path, kind, mean):
    net = hf_net(kind, tokenizer)
    with pytest.raises(vitx.VitxError, match="needs the tokenizer of its prompts"):
        wrap(net).encode_text(PROMPTS)
    with pytest.raises(vitx.VitxError, match="tokenizer must be a Hugging Face tokenizer"):
        wrap(net, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    net.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = vitx.load_model(f"hf:{tmp_path}")
    assert type(model.net) is type(net) and model.config.kind == "clip" and model.config.mean[0] == pytest.approx(mean)
    x = torch.randn(2, 3, SIZE, SIZE)
    expected = HFReference(net, tokenizer).logits(x, PROMPTS)
    close(model.adapter.similarities(x, model.encode_text(PROMPTS)).detach(), expected)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_open_clip_loads_local_weights(tiny_arch, tmp_path, suffix):
    net = open_clip_net(tiny_arch)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    model = vitx.load_model("open_clip:vitx-tiny", weights=str(path))
    assert model.config.name == "open_clip:vitx-tiny" and model.config.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    x = torch.randn(2, 3, SIZE, SIZE)
    close(model.adapter.similarities(x, model.encode_text(PROMPTS)).detach(), OpenClipReference(net).logits(x, PROMPTS))


@pytest.mark.parametrize("source, weights, match", [
    ("open_clip:no-such-arch", "w.pt", "open_clip has no architecture 'no-such-arch'"),
    ("open_clip:vitx-tiny", None, "needs weights='FILE'"),
    ("open_clip:vitx-tiny", "missing.pt", "weights file .* does not exist"),
    ("hf:./no-such-dir", None, "no such model directory")])
def test_loading_errors(tiny_arch, source, weights, match):
    with pytest.raises(vitx.VitxError, match=match):
        vitx.load_model(source, weights=weights)


def test_open_clip_weights_of_another_architecture(tiny_arch, tmp_path):
    other = {**OPEN_CLIP_TINY, "embed_dim": 8}
    (tmp_path / "vitx-other.json").write_text(json.dumps(other))
    open_clip.add_model_config(tmp_path / "vitx-other.json")
    torch.save(open_clip.create_model("vitx-other").state_dict(), tmp_path / "other.pt")
    with pytest.raises(vitx.VitxError, match="could not load weights for open_clip model 'vitx-tiny'.*text_projection"):
        vitx.load_model("open_clip:vitx-tiny", weights=str(tmp_path / "other.pt"))


def test_frozen_weights_and_one_reset_per_forward(pairs, tokenizer):
    """The forward goes through the network's own call, so the tap's pre-hook sees the pixels: a model served with
    frozen weights is explained the same, and each forward under the tap records its sites afresh."""
    model, x, reference = pairs
    method = "saliency" if isinstance(model.net, transformers.SiglipModel) else "generic-attention"
    expected = vitx.explain(model, x, text=PROMPTS, method=method, normalize=False).maps
    own = {} if isinstance(reference, OpenClipReference) else {"tokenizer": tokenizer}
    frozen = wrap(copy.deepcopy(model.net).requires_grad_(False), **own)
    close(vitx.explain(frozen, x, text=PROMPTS, method=method, normalize=False).maps, expected)
    text = model.encode_text(PROMPTS[:2])
    with vitx.trace(model) as tr:
        model(x, text)
        model(x, text)
    assert [r.site.query for r in tr.sites] == ["image"] * 2 + ["text"] * 2


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_image_tower_takes_other_sizes(tokenizer, kind):
    net = hf_net(kind, tokenizer)
    model, reference = wrap(net, tokenizer=tokenizer), HFReference(net, tokenizer)
    x = torch.randn(1, 3, 48, 48)
    assert model.layout(x).grid == (6, 6)
    text = model.encode_text(PROMPTS)
    with torch.no_grad():
        expected = reference.net(**reference.encode(PROMPTS), pixel_values=x, interpolate_pos_encoding=True)
    close(model.adapter.similarities(x, text), expected.logits_per_image)
    assert vitx.explain(model, x, text=PROMPTS, method="gradcam").maps.shape == (3, 48, 48)


@pytest.mark.parametrize("change, match", [
    (dict(vision_cfg={"pool_type": "avg"}), "pools 'avg'"),
    (dict(vision_cfg={"qk_norm": True}), "attention \\(Attention\\) is not the nn.MultiheadAttention"),
    (dict(text_cfg={"pool_type": "none"}), "its text is pooled 'none'"),
    (dict(vision_cfg={"layers": [1, 1, 1, 1], "width": 32}), "own ViT image tower")])
def test_open_clip_layouts_it_does_not_read(change, match):
    config = {part: {**OPEN_CLIP_TINY[part], **change.get(part, {})} for part in ("vision_cfg", "text_cfg")}
    net = open_clip.CLIP(embed_dim=16, **config)
    with pytest.raises(vitx.VitxError, match=match):
        wrap(net)
    with pytest.raises(vitx.VitxError, match="open_clip VisionTransformer: vitx reads open_clip's CLIP"):
        wrap(open_clip_net("vitx-tiny").visual)
