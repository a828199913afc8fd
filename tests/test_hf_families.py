"""Hugging Face BEiT, data2vec-vision, DINOv2 (with registers) and the CLIP and SigLIP vision towers through the
tap, loaded with eager and SDPA attention: the model's own logits, its attention as transformers reports it, maps
equal to the formulas where the head reads the class token, every method batched, the towers without a head,
relevance rules where their layer kinds are covered, and loading from a saved directory."""
import json

import pytest
import torch

import vitx
from families_hf import CONFIGS, FAMILIES, TOWERS, hf_model
from reference import VIT_METHODS, close, formula_maps, images, jitter, snapshot, target_score
from vitx.layout import TokenLayout
from vitx.registry import get_method

IMPLEMENTATIONS = ["eager", "sdpa"]
# model class -> (settings beyond the small config, prefix tokens, pooling)
VARIANTS = {
    "beit-mean": ("BeitForImageClassification", {}, 1, "avg"),
    "beit-cls": ("BeitForImageClassification", {"use_mean_pooling": False}, 1, "cls"),
    "beit-shared-bias": ("BeitForImageClassification", {"use_relative_position_bias": False, "use_mean_pooling": False,
                                                         "use_shared_relative_position_bias": True}, 1, "cls"),
    "data2vec": ("Data2VecVisionForImageClassification", {}, 1, "avg"),
    "data2vec-cls-shared-bias": ("Data2VecVisionForImageClassification",
                                 {"use_mean_pooling": False, "use_shared_relative_position_bias": True}, 1, "cls"),
    "dinov2": ("Dinov2ForImageClassification", {}, 1, "cls+avg"),
    "dinov2-registers": ("Dinov2WithRegistersForImageClassification", {}, 5, "cls+avg"),
    "clip": ("CLIPForImageClassification", {}, 1, "avg"),
    "siglip": ("SiglipForImageClassification", {}, 0, "avg"),
    "dinov2-tower": ("Dinov2Model", {}, 1, "cls"),
    "dinov2-registers-tower": ("Dinov2WithRegistersModel", {}, 5, "cls"),
    "clip-tower": ("CLIPVisionModel", {}, 1, "cls"),
    "siglip-tower": ("SiglipVisionModel", {}, 0, "map"),
}
CLS_HEADS = [v for v, (*_, pooling) in VARIANTS.items() if pooling == "cls" and "tower" not in v]
CLASSIFIERS = [v for v in VARIANTS if "tower" not in v]
FAST = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 3}}


@pytest.fixture(scope="module")
def x():
    """Two 64x64 images."""
    return images(2, 3, 64, 64)


def build(variant, implementation="eager"):
    cls_name, settings, *_ = VARIANTS[variant]
    torch.manual_seed(0)
    return jitter(hf_model(cls_name, implementation, **settings))


def output(out):
    """A classifier's logits, or a tower's last hidden state."""
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def score(out):
    """A scalar to differentiate: the predicted logits, or a tower's class-token (first token) features."""
    return target_score(out.logits) if hasattr(out, "logits") else out.last_hidden_state[:, 0].square().sum()


def attention_settings(net):
    """Every attention setting on the model: each config's implementation and each module's class."""
    configs = {name: m.config._attn_implementation for name, m in net.named_modules() if hasattr(m, "config")}
    return configs, [type(m) for m in net.modules()]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tap_records_without_changing_the_model(variant, implementation, x):
    net = build(variant, implementation)
    _, _, prefix, pooling = VARIANTS[variant]
    model = vitx.load_model(net)
    assert model.adapter.framework == "hf" and model.config.pooling == pooling
    assert model.layout(x) == TokenLayout(prefix, (8, 8), (8, 8), None if variant.startswith("siglip") else 0)
    before, settings = snapshot(net), attention_settings(net)
    assert set(settings[0].values()) == {implementation}
    with torch.no_grad():
        expected = output(net(pixel_values=x))
        with vitx.trace(net) as tr:
            close(output(net(pixel_values=x)), expected, rtol=1e-5)
            assert attention_settings(net) == settings
        assert snapshot(net) == before and attention_settings(net) == settings
        with pytest.raises(RuntimeError, match="inside the tap"):
            with vitx.trace(net):
                net(pixel_values=x)
                raise RuntimeError("inside the tap")
    assert snapshot(net) == before and attention_settings(net) == settings
    N = 64 + prefix
    assert [a.shape for a in tr.attentions] == [(2, 4, N, N)] * 3
    assert [t.shape for t in tr.tokens] == [(2, N, 64)] * 3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_attention_and_gradients_match_output_attentions(variant, implementation, x):
    """Reference: the eager model's ``output_attentions`` and their gradients; the tap runs on the same weights
    loaded with ``implementation``."""
    eager = build(variant, "eager")
    out = eager(pixel_values=x, output_attentions=True)
    attentions = list(out.attentions)
    gradients = torch.autograd.grad(score(out), attentions)
    net = build(variant, implementation)
    with vitx.trace(net) as tr:
        ours = net(pixel_values=x)
    for mine, theirs in zip(tr.attentions + tr.gradients(score(ours)), attentions + list(gradients)):
        close(mine.detach(), theirs.detach())


@pytest.mark.parametrize("variant", CLS_HEADS)
def test_maps_match_the_formulas(variant, x):
    net = build(variant)
    out = net(pixel_values=x, output_attentions=True)
    attentions = list(out.attentions)
    gradients = torch.autograd.grad(target_score(out.logits), attentions)
    expected = formula_maps([a.detach() for a in attentions], gradients, 1, (8, 8))
    for method, reference in expected.items():
        assert reference.abs().max() > 0
        close(vitx.explain(net, x, method=method, normalize=False).token_maps, reference)


@pytest.mark.parametrize("variant", CLASSIFIERS)
def test_every_method_runs_batched_or_refuses_before_running(variant, x):
    """Each method gives finite maps on 2 images, or a one-line VitxError before any forward pass; the class-token
    methods are refused where the head does not read the class token, saying what it reads; the head-row methods
    read the mean of the patch rows of a mean-pooled head and refuse other poolings."""
    model = vitx.load_model(build(variant, "sdpa"))
    forwards = []
    model.net.register_forward_pre_hook(lambda *_: forwards.append(1))
    ran, refused = [], {}
    for name in VIT_METHODS:
        forwards.clear()
        try:
            exp = vitx.explain(model, x, method=name, **FAST.get(name, {}))
        except vitx.VitxError as err:
            assert not forwards and "\n" not in str(err), name
            refused[name] = str(err)
            continue
        assert exp.maps.shape == (2, 64, 64) and torch.isfinite(exp.maps).all(), name
        ran.append(name)
    # the pruning methods run vitx's own ViT blocks or a twin trained for the zoo's weights: refused here
    pruning = {name for name in VIT_METHODS if get_method(name).family == "pruning"}
    assert pruning <= set(refused)
    class_token = {name for name in VIT_METHODS if "cls_token" in get_method(name).needs} - {"vit-shapley"} - pruning
    head_row = {name for name in VIT_METHODS if "head_row" in get_method(name).needs}
    assert {"saliency", "gradcam", "occlusion", "lrp", "attnlrp"} <= set(ran)
    pooling = model.config.pooling
    if pooling == "cls":
        assert class_token | head_row <= set(ran)
        return
    assert class_token <= set(refused)
    reason = "this model's head has none" if model.config.cls_index is None else f"reads '{pooling}'-pooled tokens"
    assert all(reason in refused[name] for name in class_token)
    if pooling == "avg":                 # the mean of the patch rows
        assert head_row <= set(ran)
    else:
        assert all(f"head reads '{pooling}'-pooled tokens" in refused[name] for name in head_row)


def test_swiglu_dinov2_refuses_relevance_rules(x):
    """DINOv2's SwiGLU feed-forward multiplies two projections: the relevance rules have no rule for the gate and
    say so before running; the gradient methods run."""
    torch.manual_seed(0)
    net = jitter(hf_model("Dinov2ForImageClassification", use_swiglu_ffn=True))
    for method in ("lrp", "attnlrp"):
        with pytest.raises(vitx.VitxError, match=r"rules have none for layer 'dinov2\.encoder\.layer\.0\.mlp\."
                                                 r"gate_proj' \(SwiGLU gate\)"):
            vitx.explain(net, x, method=method)
    assert torch.isfinite(vitx.explain(net, x, method="saliency").maps).all()


@pytest.mark.parametrize("variant, classifier", [
    ("dinov2-tower", "Dinov2ForImageClassification"),
    ("dinov2-registers-tower", "Dinov2WithRegistersForImageClassification"),
    ("clip-tower", "CLIPForImageClassification"), ("siglip-tower", "SiglipForImageClassification")])
def test_towers_are_traced_and_refused_by_explain(variant, classifier, x):
    net = build(variant)
    forwards = []
    net.register_forward_pre_hook(lambda *_: forwards.append(1))
    with pytest.raises(vitx.VitxError, match=f"is a vision tower with no classifier.*load {classifier}"):
        vitx.explain(net, x, method="saliency")
    assert not forwards and vitx.load_model(net).config.num_classes == 0


@pytest.mark.parametrize("variant", ["beit-cls", "data2vec", "dinov2-registers", "clip", "siglip"])
def test_non_square_input(variant):
    """64x96 images on a 64x64 model: position embeddings (and BEiT's relative position bias) resampled."""
    net = build(variant, "sdpa")
    wide = images(2, 3, 64, 96)
    model = vitx.load_model(net)
    assert model.layout(wide).grid == (8, 12)
    resize = {} if "dinov2" in variant else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        close(model(wide), net(pixel_values=wide, **resize).logits, rtol=1e-5)
    assert vitx.explain(model, wide, method="saliency").maps.shape == (2, 64, 96)


# model type -> the image processor defaults its saved directory gets without a preprocessor_config.json
DEFAULT_MEAN = {"beit": (0.5,) * 3, "data2vec": (0.5,) * 3, "dinov2": (0.485, 0.456, 0.406),
                "clip": (0.48145466, 0.4578275, 0.40821073), "siglip": (0.5,) * 3}


@pytest.mark.parametrize("variant", ["beit-mean", "data2vec", "dinov2", "dinov2-registers", "clip", "siglip",
                                     "dinov2-tower", "dinov2-registers-tower", "clip-tower", "siglip-tower"])
def test_saved_directory_loads_with_its_preprocessing(variant, tmp_path, x):
    net = build(variant, "sdpa")
    tower = VARIANTS[variant][0] in TOWERS
    if not tower:
        net.config.id2label = {i: f"shape {i}" for i in range(5)}
    net.save_pretrained(tmp_path)
    model = vitx.load_model(f"hf:{tmp_path}")
    assert type(model.net) is type(net) and model.config.image_size == (64, 64)
    family = next(name for name in DEFAULT_MEAN if variant.startswith(name))
    assert model.config.mean == pytest.approx(DEFAULT_MEAN[family])
    if tower:
        assert model.config.num_classes == 0
        with torch.no_grad():
            close(model.net(pixel_values=x).last_hidden_state, net(pixel_values=x).last_hidden_state, rtol=1e-6)
        return
    assert model.config.class_names == tuple(f"shape {i}" for i in range(5))
    with torch.no_grad():
        close(model(x), net(pixel_values=x).logits, rtol=1e-6)


def test_image_processor_beside_the_weights(tmp_path):
    """A DINOv2 directory with its image processor (DINOv2's checkpoints crop to 224 from a 518-px config): the
    crop is the input size, the processor's mean and std are the normalisation."""
    from transformers import BitImageProcessor
    build("dinov2").save_pretrained(tmp_path)
    BitImageProcessor(crop_size={"height": 48, "width": 56}, image_mean=[0.1, 0.2, 0.3],
                      image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    config = vitx.load_model(f"hf:{tmp_path}").config
    assert config.image_size == (48, 56) and config.mean == (0.1, 0.2, 0.3) and config.std == (0.4, 0.5, 0.6)


def test_a_model_vitx_does_not_read_is_refused_by_name(tmp_path):
    import transformers
    config = transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2)
    transformers.CLIPTextModel(config).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    with pytest.raises(vitx.VitxError, match=r"is a CLIPTextModel, which vitx does not read: it reads image "
                                             r"classifiers \(\.\.\.ForImageClassification\) and the vision towers "
                                             r"Dinov2Model.*the image-text models CLIPModel, SiglipModel"):
        vitx.load_model(f"hf:{tmp_path}")
    with pytest.raises(vitx.VitxError, match="Hugging Face model CLIPTextModel is not one the tap can inspect"):
        vitx.load_model(transformers.CLIPTextModel(config))


def test_catalog_builds():
    for family in FAMILIES:
        net = family.build()
        model = vitx.load_model(net)
        with torch.no_grad():
            logits = model(images(2, 3, *family.size))
        assert logits.shape == (2, 5) and torch.isfinite(logits).all(), family.name
        if family.attentions is not None:
            _, attentions = family.attentions(net, images(2, 3, *family.size))
            tokens = model.layout(images(1, 3, *family.size)).num_tokens
            assert len(attentions) == 3 and attentions[0].shape == (2, 4, tokens, tokens)


DATA2VEC_KEYS = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
                 "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
                 "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def vit_twin(cls_name, vit):
    """BEiT or data2vec-vision built as a plain ViT (absolute position embeddings, no relative position bias, no
    layer scale, a class-token head) with ``vit``'s weights (its key biases zero: BEiT's key has none)."""
    import transformers
    config = getattr(transformers, CONFIGS[cls_name][0])(
        **VARIANTS["beit-cls"][1], **{k: getattr(vit.config, k) for k in (*CONFIGS[cls_name][1], "num_labels")
                                      if k != "use_relative_position_bias"},
        use_absolute_position_embeddings=True, layer_scale_init_value=0.0, attn_implementation="eager")
    net = getattr(transformers, cls_name)(config).eval()
    prefix = "beit." if cls_name.startswith("Beit") else "data2vec_vision."
    state = {}
    for key, value in vit.state_dict().items():
        if "k_proj.bias" in key:
            continue
        key = key.replace("vit.", prefix, 1)
        if prefix == "data2vec_vision." and ".layers." in key:
            key = key.replace(".layers.", ".encoder.layer.")
            for theirs, ours in DATA2VEC_KEYS.items():
                key = key.replace(theirs, ours)
        state[key] = value
    net.load_state_dict(state)
    return net


@pytest.mark.parametrize("cls_name", ["BeitForImageClassification", "Data2VecVisionForImageClassification"])
def test_relevance_maps_equal_the_plain_vit_twin(cls_name, x):
    """BEiT and data2vec-vision reduced to a ViT give its logits and, method by method, its maps: the relevance
    rules bind to their layers (residual branches, pooler, activations) as to the ViT's."""
    from reference import tiny_hf
    vit = tiny_hf()
    with torch.no_grad():
        for layer in vit.vit.layers:
            layer.attention.k_proj.bias.zero_()
    twin = vit_twin(cls_name, vit)
    with torch.no_grad():
        close(twin(pixel_values=x).logits, vit(pixel_values=x).logits, rtol=1e-5)
    for method in ("lrp", "attnlrp", "transformer-attribution", "partial-lrp", "generic-attention"):
        ours, theirs = (vitx.explain(net, x, method=method, normalize=False).maps for net in (twin, vit))
        assert theirs.abs().max() > 0
        close(ours, theirs, rtol=1e-4)
