"""The same weights loaded every way vitx takes them get the same preprocessing, class names, pooling and
logits: timm's name with a weights file, the timm module, the timm-keyed file with ``arch=``, the Hugging
Face module and its saved directory; the user's settings override them, and bad ones are refused."""
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import ImageNetInfo

import vitx
from reference import hf_twin, jitter, tiny_timm

NAME = "vit_tiny_patch16_224"       # timm's name: loading timm:<name> builds its default 224, 1000-class model
SHARED = ("image_size", "patch_size", "num_classes", "num_prefix_tokens", "cls_index", "mean", "std",
          "class_names", "multi_label", "kind", "pooling")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """{way: model}, all with one set of random weights."""
    tmp = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    timm_net = jitter(timm.create_model(NAME), scale=0.05)
    path = tmp / "tiny.safetensors"
    save_file(timm_net.state_dict(), str(path))
    hf = hf_twin(timm_net)
    hf.config.id2label = dict(enumerate(ImageNetInfo().label_descriptions()))  # as ImageNet checkpoints carry
    hf.save_pretrained(tmp / "hf")
    return {"timm-name": vitx.load_model(f"timm:{NAME}", weights=path), "timm-module": vitx.load_model(timm_net),
            "file": vitx.load_model(path, arch=NAME), "hf-module": vitx.load_model(hf),
            "hf-directory": vitx.load_model(f"hf:{tmp / 'hf'}")}


def test_same_config_every_way(loaded):
    reference = loaded["timm-name"].config
    assert reference.mean == reference.std == (0.5, 0.5, 0.5)          # timm's configuration for these weights
    assert reference.class_names[0] == "tench, Tinca tinca" and len(reference.class_names) == 1000
    assert reference.pooling == "cls"
    for way, model in loaded.items():
        assert {f: getattr(model.config, f) for f in SHARED} == {f: getattr(reference, f) for f in SHARED}, way


def test_same_logits_every_way(loaded):
    image = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    logits = {way: model(model.preprocess(image)).detach() for way, model in loaded.items()}
    reference = logits["timm-name"]
    assert reference.std() > 0.1
    for way, value in logits.items():
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-4, msg=way)


def test_user_settings_override_the_model():
    net = tiny_timm()
    model = vitx.load_model(net, mean=[0.1, 0.2, 0.3], std=torch.tensor([0.25, 0.5, 0.5]), class_names=list("abcde"))
    assert model.config.mean == (0.1, 0.2, 0.3) and model.config.std == (0.25, 0.5, 0.5)
    assert model.config.class_names == tuple("abcde")
    assert vitx.load_model(net).config.mean == (0.5, 0.5, 0.5)       # the module itself is untouched
    again = vitx.load_model(model, std=(0.5, 0.5, 0.5))                 # a Model: its settings, overridden
    assert again.config.std == (0.5, 0.5, 0.5) and again.config.mean == (0.1, 0.2, 0.3) and again.net is net
    assert model.config.std == (0.25, 0.5, 0.5)
    with pytest.raises(vitx.VitxError, match="unknown model setting 'depth'"):
        vitx.load_model(model, depth=3)


@pytest.mark.parametrize("setting, message", [
    (dict(mean=(0, 0)), r"mean must be 3 finite numbers, one per RGB channel; got \(0.0, 0.0\)"),
    (dict(mean=0.5), "mean must be 3 numbers, one per RGB channel; got 0.5"),
    (dict(std=(0.2, float("nan"), 0.2)), "std must be 3 finite numbers"),
    (dict(std=(0.2, 0, 0.2)), r"std must be positive in every channel \(the input is divided by it\)"),
    (dict(class_names=["a", "b"]), "class_names has 2 names for a model of 5 classes"),
])
def test_bad_settings_are_refused(setting, message):
    with pytest.raises(vitx.VitxError, match=message):
        vitx.load_model(tiny_timm(), **setting)
