"""``vitx.explain`` plumbing: shapes, scaling, targets, chunking, errors, model state, inputs, and the
Explanation object."""
import numpy as np
import pytest
import torch
from PIL import Image

import vitx
from vitx.models import ViTConfig, VisionTransformer
from vitx.registry import get_method

from reference import VIT_METHODS, trained_modules

NAMES = ("circle", "square", "star", "heart")
LIGHT = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 3}}


@pytest.fixture(scope="module")
def model():
    """A 2-block ViT on 32x32 images (4x4 patch grid) with named classes."""
    torch.manual_seed(0)
    net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                      num_classes=4))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model = vitx.load_model(net.eval(), class_names=NAMES)
    LIGHT.update(trained_modules(model))  # random trained modules (ViT Shapley's explainer, pruned twins) for it
    return model


@pytest.fixture(scope="module")
def images():
    """Five images in [0, 1]."""
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def x(model, images):
    return model.preprocess(images)


def input_gradient(model, x, targets):
    """max_c |∂y_t/∂x_c|, the saliency map, by plain autograd."""
    x = x.clone().requires_grad_(True)
    model(x).gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
    return x.grad.abs().amax(1)


@pytest.mark.parametrize("name", VIT_METHODS)
def test_shapes_scaling_and_fields(model, x, name):
    exp = vitx.explain(model, x, name, **LIGHT.get(name, {}))
    assert exp.maps.shape == (5, 32, 32) and len(exp) == 5
    if get_method(name).output == "pixels":
        assert exp.token_maps is None
    else:
        assert exp.token_maps.shape == (5, 4, 4)
    for maps in filter(lambda m: m is not None, (exp.maps, exp.token_maps)):
        flat = maps.flatten(1)
        varying = flat.amax(1) > flat.amin(1)
        assert varying.any()
        assert torch.allclose(flat.amin(1), torch.zeros(5)) and torch.allclose(flat.amax(1)[varying], torch.ones(1))
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(exp.logits, logits)
    assert exp.targets.tolist() == logits.argmax(1).tolist()
    assert exp.method == name and exp.params == {**get_method(name).defaults, **LIGHT.get(name, {})}
    assert exp.class_names == NAMES
    torch.testing.assert_close(exp.images, model.denormalize(x))


def test_unnormalized_token_maps_are_upsampled_bilinearly(model, x):
    exp = vitx.explain(model, x, "rollout", normalize=False)
    expected = torch.nn.functional.interpolate(exp.token_maps[:, None], size=(32, 32), mode="bilinear")[:, 0]
    torch.testing.assert_close(exp.maps, expected)
    assert exp.maps.min() > 0 and exp.maps.max() < 1  # rollout rows are probabilities, not min-max scaled


@pytest.mark.parametrize("target, expected", [(2, [2] * 5), ("heart", [3] * 5), ([0, 1, 2, 3, 0], [0, 1, 2, 3, 0]),
                                              (["star", 0, "square", 3, 3], [2, 0, 1, 3, 3]),
                                              (torch.tensor([3, 3, 1, 1, 0]), [3, 3, 1, 1, 0]),
                                              (np.int64(1), [1] * 5), (torch.tensor(2), [2] * 5),
                                              (np.array([0, 0, 1, 1, 2]), [0, 0, 1, 1, 2])])
def test_explicit_targets_are_honoured(model, x, target, expected):
    exp = vitx.explain(model, x, "saliency", target, normalize=False)
    assert exp.targets.tolist() == expected
    torch.testing.assert_close(exp.maps, input_gradient(model, x, expected))


def test_bad_arguments_raise_vitx_error(model, x):
    cases = [(dict(target=4), "out of range"), (dict(target=-1), "out of range"), (dict(target=[0, 1]), "2 targets"),
             (dict(target="triangle"), "unknown target class"),
             (dict(target=1.5), "whole number"), (dict(target=True), "class index or name"), (dict(method="no-such-method"), "unknown method"),
             (dict(steps=3), "no parameter 'steps'"), (dict(batch_size=0), "batch_size"),
             (dict(method="integrated-gradients", steps=0), "steps"),
             (dict(method="integrated-gradients", baseline="white"), "baseline"),
             (dict(method="smoothgrad", samples=0), "samples")]
    for kwargs, message in cases:
        kwargs = {"method": "saliency", **kwargs}
        with pytest.raises(vitx.VitxError, match=message):
            vitx.explain(model, x, **kwargs)
    with pytest.raises(vitx.VitxError, match="patch size"):
        vitx.explain(model, torch.zeros(1, 3, 36, 36))


@pytest.mark.parametrize("name", ["generic-attention", "gradcam", "integrated-gradients", "smoothgrad"])
def test_chunking_gives_identical_results(model, x, name):
    params = LIGHT.get(name, {})
    whole = vitx.explain(model, x, name, [1, 2, 3, 0, 1], normalize=False, **params)
    for batch_size in (1, 2):
        chunked = vitx.explain(model, x, name, [1, 2, 3, 0, 1], normalize=False, batch_size=batch_size, **params)
        torch.testing.assert_close(chunked.maps, whole.maps, rtol=1e-4, atol=1e-6 * float(whole.maps.abs().max()))
        torch.testing.assert_close(chunked.logits, whole.logits)
        assert chunked.targets.tolist() == [1, 2, 3, 0, 1]


def test_model_mode_and_hooks_are_restored(model, x):
    net = model.net
    seen = []
    hook = net.register_forward_pre_hook(lambda module, _: seen.append(module.training))
    try:
        net.train()
        net.blocks[1].eval()
        modes = [m.training for m in net.modules()]
        vitx.explain(model, x[:2], "generic-attention")
        assert seen and not any(seen), "explain must run the model in eval mode"
        assert [m.training for m in net.modules()] == modes
        with pytest.raises(vitx.VitxError, match="block"):
            vitx.explain(model, x[:2], "raw-attention", block=7)  # fails inside the method, under the tap
        assert [m.training for m in net.modules()] == modes
    finally:
        hook.remove()
        net.eval()
    assert all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m) for m in net.modules())


def test_images_in_other_forms_are_preprocessed(model, images, x):
    expected = vitx.explain(model, x, "generic-attention").maps
    pils = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for image in images]
    for given in (pils, [np.asarray(p) for p in pils]):
        exp = vitx.explain(model, given, "generic-attention")
        torch.testing.assert_close(exp.maps, expected, atol=0.05, rtol=0)  # 8-bit rounding of the images
    bigger = [p.resize((64, 64), Image.BILINEAR) for p in pils[:2]]
    exp = vitx.explain(model, bigger, "saliency")
    assert exp.maps.shape == (2, 32, 32) and exp.images.shape == (2, 3, 32, 32)


def test_overlay_and_save(model, x, tmp_path):
    exp = vitx.explain(model, x[:3], "rollout")
    picture = exp.overlay(1)
    assert isinstance(picture, Image.Image) and picture.size == (32, 32) and picture.mode == "RGB"
    assert exp.overlay(0, scale=3).size == (96, 96)
    written = exp.save(tmp_path / "out", scale=2)
    pngs = sorted(p for p in written if p.suffix == ".png")
    assert [p.name for p in pngs] == ["000_rollout.png", "001_rollout.png", "002_rollout.png"]
    assert all(Image.open(p).size == (64, 64) for p in pngs)
    for i in range(3):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{i:03d}_rollout.npy"), exp.maps[i].numpy())
    pixel = vitx.explain(model, x[:1], "saliency").save(tmp_path / "pixel", names=["cat"])
    assert sorted(p.name for p in pixel) == ["cat_saliency.npy", "cat_saliency.png"]
