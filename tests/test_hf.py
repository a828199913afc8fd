"""Hugging Face ViT and DeiT classifiers through the tap, loaded with eager and SDPA attention: the model's
own logits, its attention as transformers reports it, and maps equal to the formulas on that attention."""
import pytest
import torch

import vitx
from reference import close, formula_maps, images, target_score, tiny_hf
from vitx.layout import TokenLayout

CLASSES = {"ViTForImageClassification": 1, "DeiTForImageClassification": 2,
           "DeiTForImageClassificationWithTeacher": 2}   # class name -> prefix tokens
IMPLEMENTATIONS = ["eager", "sdpa"]


@pytest.fixture(scope="module")
def x():
    return images(2, 3, 64, 64)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("cls_name", list(CLASSES))
def test_tap_records_without_changing_the_model(cls_name, implementation, x):
    net = tiny_hf(cls_name, implementation)
    model = vitx.load_model(net)
    prefix = CLASSES[cls_name]
    assert model.adapter.framework == "hf"
    assert model.layout(x) == TokenLayout(prefix, (8, 8), (8, 8), 0)
    with torch.no_grad():
        expected = net(pixel_values=x).logits
        with vitx.trace(net) as tr:
            logits = model(x)
            assert net.config._attn_implementation == implementation
    assert net.config._attn_implementation == implementation
    close(logits, expected, rtol=1e-5)
    N = 64 + prefix
    assert [a.shape for a in tr.attentions] == [(2, 4, N, N)] * 3
    assert [t.shape for t in tr.tokens] == [(2, N, 64)] * 3
    close(tr.attentions[0].sum(-1), torch.ones(2, 4, N))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("cls_name", list(CLASSES))
def test_maps_match_output_attentions_and_formula(cls_name, implementation, x):
    """Reference: the eager model's ``output_attentions``, their gradients, and the formulas; the tap
    runs on a model with the same weights loaded with ``implementation``."""
    eager = tiny_hf(cls_name, "eager")
    out = eager(pixel_values=x, output_attentions=True)
    attentions = list(out.attentions)
    gradients = torch.autograd.grad(target_score(out.logits), attentions)
    net = tiny_hf(cls_name, implementation)
    with vitx.trace(net) as tr:
        logits = net(pixel_values=x).logits
    for ours, theirs in zip(tr.attentions + tr.gradients(target_score(logits)), attentions + list(gradients)):
        close(ours.detach(), theirs.detach())
    expected = formula_maps([a.detach() for a in attentions], gradients, CLASSES[cls_name], (8, 8))
    for method, reference in expected.items():
        assert reference.abs().max() > 0
        close(vitx.explain(net, x, method=method, normalize=False).token_maps, reference)


@pytest.mark.parametrize("cls_name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_non_square_input(cls_name):
    """64x96 images on a 64x64 model: position embeddings interpolated, an (8, 12) patch grid."""
    net = tiny_hf(cls_name, "sdpa")
    wide = images(2, 3, 64, 96)
    model = vitx.load_model(net)
    assert model.layout(wide).grid == (8, 12)
    with torch.no_grad():
        expected = net(pixel_values=wide, interpolate_pos_encoding=True).logits
        close(model(wide), expected, rtol=1e-5)
    exp = vitx.explain(model, wide, method="generic-attention")
    assert exp.maps.shape == (2, 64, 96) and exp.token_maps.shape == (2, 8, 12)
    torch.testing.assert_close(exp.logits, expected, rtol=1e-4, atol=1e-5)
