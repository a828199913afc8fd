"""Hugging Face DetrForObjectDetection through the tap (random weights, a tiny configuration with a ResNet backbone
built locally): its description and token grid, the tap's sites are transformers' own attentions and leave the model
as it was, generic-attention equals Chefer et al.'s encoder-decoder rules written out here on transformers'
attentions, a batch of objects equals one image at a time, and saving and loading a local directory."""
import pytest
import torch

import vitx
from reference import jitter, snapshot
from vitx.errors import VitxError
from vitx.model import wrap
from vitx.registry import get_method

transformers = pytest.importorskip("transformers")

QUERIES, CLASSES = 6, ("circle", "square", "star")


def tiny_detr():
    """A DETR with a three-stage ResNet backbone (stride 16: a 64x64 image is a 4x4 map), 2 encoder and 2 decoder
    layers; the weights jittered so that attentions, gradients and queries differ."""
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1],
                                         layer_type="basic", out_features=["stage3"])
    config = transformers.DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                                     d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                     num_queries=QUERIES, id2label=dict(enumerate(CLASSES)),
                                     attn_implementation="eager")
    torch.manual_seed(0)
    return jitter(transformers.DetrForObjectDetection(config))


@pytest.fixture(scope="module")
def detr():
    """(the wrapped model, three 64x64 inputs)."""
    model = wrap(tiny_detr(), image_size=(64, 64))
    return model, torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def their_attentions(net, x):
    """transformers' own attention probabilities in forward order (encoder layers, then per decoder layer its
    self- and cross-attention), and the output."""
    out = net(pixel_values=x, output_attentions=True)
    decoder = [a for pair in zip(out.decoder_attentions, out.cross_attentions) for a in pair]
    return [*out.encoder_attentions, *decoder], out


def test_description_and_token_grid(detr):
    model, x = detr
    c = model.config
    assert (c.kind, c.num_classes, c.class_names, c.patch_size) == ("detr", 3, CLASSES, (16, 16))
    assert (c.num_prefix_tokens, c.cls_index, c.dynamic_size, model.detector) == (0, None, True, True)
    assert wrap(model.net).config.image_size == (800, 800)      # DetrImageProcessor's shortest edge, no file saved
    assert model.layout(x).grid == (4, 4)
    wide = torch.zeros(1, 3, 64, 96)
    assert model.layout(wide).grid == (4, 6)
    with vitx.trace(model) as tr:
        model(wide)
    assert tr.sites[0].attention.shape[-1] == 24 and tr.sites[-1].attention.shape[-2:] == (QUERIES, 24)
    with pytest.raises(VitxError, match="not a multiple of the patch size"):
        model.layout(torch.zeros(1, 3, 70, 64))


def test_sites_are_transformers_attentions_and_the_model_is_left_as_it_was(detr):
    model, x = detr
    net = model.net
    theirs, out = their_attentions(net, x)
    before = snapshot(net)       # after output_attentions, which installs transformers' own hooks for good
    with vitx.trace(model) as tr:
        logits = model(x)
    assert snapshot(net) == before
    assert [(r.site.name, r.site.query, r.site.key, r.site.block) for r in tr.sites] == [
        ("encoder.layers.0.self_attn", "image", "image", 0), ("encoder.layers.1.self_attn", "image", "image", 1),
        ("decoder.layers.0.self_attn", "queries", "queries", 0),
        ("decoder.layers.0.encoder_attn", "queries", "image", 0),
        ("decoder.layers.1.self_attn", "queries", "queries", 1),
        ("decoder.layers.1.encoder_attn", "queries", "image", 1)]
    assert len(tr.sites) == len(theirs)
    for recorded, expected in zip(tr.sites, theirs):
        torch.testing.assert_close(recorded.attention, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-6)
    detected, boxes = model.detect(x)
    torch.testing.assert_close(detected, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(boxes, out.pred_boxes, rtol=1e-5, atol=1e-6)
    assert logits.shape == (3, QUERIES, len(CLASSES) + 1)


def hand_rules(net, image, query, label):
    """Chefer et al.'s encoder-decoder rules on one image, from transformers' attentions and their gradients
    (``retain_grad``): Ā = E_h[(∇A ⊙ A)⁺]; R_ii += Ā R_ii per encoder layer; per decoder layer R_qq += Ā R_qq,
    R_qi += Ā R_qi, then R_qi += R̄_qqᵀ Ā_qi R̄_ii with R̄ = rownorm(R − I) + I, where a row of R − I that is all zero
    (a query no gradient reached through its attention) stays zero. Row ``query`` of R_qi."""
    attentions, out = their_attentions(net, image[None])
    for a in attentions:
        a.retain_grad()
    out.logits[0, query, label].backward()
    weights = [(a.grad * a).clamp(min=0).mean(1)[0].detach() for a in attentions]

    def normalised(relevance):
        residual = relevance - torch.eye(len(relevance))
        return residual / residual.sum(-1, keepdim=True).clamp(min=1e-30) + torch.eye(len(relevance))
    tokens = attentions[0].shape[-1]
    r_ii, r_qq, r_qi = torch.eye(tokens), torch.eye(QUERIES), torch.zeros(QUERIES, tokens)
    encoder, decoder = weights[:len(net.model.encoder.layers)], weights[len(net.model.encoder.layers):]
    for a in encoder:
        r_ii = r_ii + a @ r_ii
    for a_qq, a_qi in zip(decoder[::2], decoder[1::2]):
        r_qq, r_qi = r_qq + a_qq @ r_qq, r_qi + a_qq @ r_qi
        r_qi = r_qi + normalised(r_qq).T @ a_qi @ normalised(r_ii)
    return r_qi[query].reshape(4, 4)


def test_generic_attention_equals_the_rules_by_hand(detr):
    model, x = detr
    exp = vitx.explain(model, x[:2], "generic-attention", target=[1, 4], normalize=False)
    assert [(o["image"], o["query"]) for o in exp.objects] == [(0, 1), (0, 4), (1, 1), (1, 4)]
    probabilities = model.net(pixel_values=x[:2]).logits.softmax(-1)
    for row, found in enumerate(exp.objects):
        label = int(probabilities[found["image"], found["query"], :-1].argmax())
        assert found["label"] == label and exp.targets[row] == label
        expected = hand_rules(model.net, x[found["image"]], found["query"], label)
        torch.testing.assert_close(exp.token_maps[row], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(exp.token_maps[0], exp.token_maps[1])      # two queries, two maps


@pytest.mark.parametrize("method", ["generic-attention", "saliency"])
def test_a_batch_gives_each_object_the_map_of_its_image_alone(detr, method):
    if "detr" not in get_method(method).kinds:
        pytest.skip(f"{method} does not take detectors yet")
    model, x = detr
    together = vitx.explain(model, x, method, target=[0, 2, 5], normalize=False)
    alone = [vitx.explain(model, x[i:i + 1], method, target=[0, 2, 5], normalize=False) for i in range(len(x))]
    torch.testing.assert_close(together.maps, torch.cat([e.maps for e in alone]), rtol=1e-4, atol=1e-6)
    assert [o["query"] for o in together.objects] == [0, 2, 5] * 3


def test_saliency_is_the_gradient_of_the_object_score(detr):
    if "detr" not in get_method("saliency").kinds:
        pytest.skip("saliency does not take detectors yet")
    model, x = detr
    exp = vitx.explain(model, x[:1], "saliency", target=[3], normalize=False)
    image = x[:1].clone().requires_grad_(True)
    model.net(pixel_values=image).logits[0, 3, exp.objects[0]["label"]].backward()
    torch.testing.assert_close(exp.maps[0], image.grad[0].abs().amax(0), rtol=1e-4, atol=1e-8)


def test_errors_leave_the_model_as_it_was(detr):
    model, x = detr
    their_attentions(model.net, x[:1])
    before = snapshot(model.net)
    with pytest.raises(VitxError, match="target query 9 is out of range: this detector has 6 queries"):
        vitx.explain(model, x, "generic-attention", target=[9])
    with pytest.raises(ValueError, match="channel dimension"):
        with vitx.trace(model):
            model(x[:, :2])                   # two channels: transformers' ResNet refuses them
    assert snapshot(model.net) == before
    torch.testing.assert_close(model(x), model.net(pixel_values=x).logits)


def test_a_saved_detr_loads_as_a_detector(detr, tmp_path):
    model, x = detr
    model.net.save_pretrained(tmp_path)
    loaded = vitx.load_model(f"hf:{tmp_path}", image_size=(64, 64))
    assert type(loaded.net).__name__ == "DetrForObjectDetection" and loaded.detector
    assert loaded.config.class_names == CLASSES
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_objects_of_a_model_in_training_mode_are_found_without_dropout():
    """transformers' DETR has dropout 0.1: find_objects ran a net left in training mode with it, so the detections
    (and scores) differed from call to call and from the ones the explanation (in eval mode) explains."""
    from vitx.objects import find_objects

    net = tiny_detr()
    model = wrap(net, image_size=(64, 64))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = find_objects(model, x, [0, 1], 0, 8)
    net.train()
    found = find_objects(model, x, [0, 1], 0, 8)
    assert torch.equal(found.score, expected.score) and torch.equal(found.box, expected.box)
    assert net.training and all(m.training for m in net.modules())
