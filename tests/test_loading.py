"""``vitx.load_model`` from timm-keyed safetensors files, timm names with local weights and Hugging Face
directories; its errors; and ``model.preprocess`` on every kind of image input."""
from dataclasses import replace

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

import vitx
from reference import VITX_SMALL, close, images, tiny_hf, tiny_timm
from vitx.models import VisionTransformer, create_model

ARCH = {k: v for k, v in VITX_SMALL.items() if k != "num_classes"}  # the file's head gives the classes


@pytest.fixture
def offline(monkeypatch):
    """No network here: make the hub fail at once instead of retrying (huggingface_hub reads HF_HUB_OFFLINE
    when imported, so the constant is patched)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_timm_keyed_file_builds_vitx_vit(tmp_path):
    timm_net = tiny_timm()
    path = tmp_path / "vit.safetensors"
    save_file(timm_net.state_dict(), str(path))
    model = vitx.load_model(path, arch="vit_small_patch16_224", **ARCH, class_names=list("abcde"))
    assert isinstance(model.net, VisionTransformer) and model.adapter.framework == "vitx"
    assert model.config.image_size == (64, 64) and model.config.num_classes == 5
    assert model.config.class_names == tuple("abcde") and model.config.name == "vit"
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_net(x), rtol=0, atol=1e-5)


def test_distilled_file(tmp_path):
    timm_net = tiny_timm("deit_small_distilled_patch16_224")
    path = tmp_path / "deit.safetensors"
    save_file(timm_net.state_dict(), str(path))
    model = vitx.load_model(str(path), arch="deit_small_distilled_patch16_224", **ARCH)
    assert model.config.num_prefix_tokens == 2
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_net(x), rtol=0, atol=1e-5)


def test_timm_name_with_local_weights(tmp_path):
    """timm's own pretrained-loading path, pointed at a local file (timm's default vit_tiny at 224)."""
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224").eval()
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), str(path))
    model = vitx.load_model("timm:vit_tiny_patch16_224", weights=path)
    assert isinstance(model.net, TimmViT) and model.adapter.framework == "timm"
    assert model.config.name == "timm:vit_tiny_patch16_224"
    assert model.config.mean == model.config.std == (0.5, 0.5, 0.5)      # timm's config for these weights
    assert len(model.config.class_names) == 1000 and model.config.class_names[0].startswith("tench")
    x = images(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_hf_directory(tmp_path):
    from transformers import ViTImageProcessor
    net = tiny_hf()
    net.config.id2label = {i: f"shape {i}" for i in range(5)}
    net.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    model = vitx.load_model(f"hf:{tmp_path}")
    assert model.adapter.framework == "hf" and model.config.name == f"hf:{tmp_path}"
    assert model.config.mean == (0.1, 0.2, 0.3) and model.config.std == (0.4, 0.5, 0.6)
    assert model.config.class_names == tuple(f"shape {i}" for i in range(5))
    x = images(2, 3, 64, 64)
    with torch.no_grad():
        close(model(x), net(pixel_values=x).logits, rtol=1e-6)
    # the module the user loaded from that directory: the same preprocessing, read beside its weights
    from transformers import AutoModelForImageClassification
    assert vitx.load_model(AutoModelForImageClassification.from_pretrained(tmp_path)).config == \
        replace(model.config, name="")
    ViTImageProcessor(do_normalize=False).save_pretrained(tmp_path)
    assert vitx.load_model(f"hf:{tmp_path}").config.std == (1.0, 1.0, 1.0)
    config = vitx.load_model(tiny_hf()).config         # no processor: ViT's image processor defaults
    assert config.mean == (0.5, 0.5, 0.5) and config.class_names[0] == "LABEL_0"


@pytest.mark.parametrize("source, message", [
    ("timm:not_a_model", "timm has no model named 'not_a_model'"),
    ("hf:/no/such/directory", "no such model directory"),
    ("missing.safetensors", "model file 'missing.safetensors' does not exist"),
    ("bogus", "unknown model 'bogus'"),
])
def test_bad_sources(source, message):
    with pytest.raises(vitx.VitxError, match=message):
        vitx.load_model(source)


def test_unreachable_hub_fails_fast(offline):
    with pytest.raises(vitx.VitxError, match=r"HF_HUB_OFFLINE is set and its weights are not in the local cache; "
                       r"pass a local file: load_model\('timm:vit_tiny_patch16_224', weights='FILE'\) or vitx "
                       r"explain --model timm:vit_tiny_patch16_224 --weights FILE$"):
        vitx.load_model("timm:vit_tiny_patch16_224")
    with pytest.raises(vitx.VitxError, match=r"'google/vit-base-patch16-224': HF_HUB_OFFLINE is set .* not in the "
                       r"local cache; pass a local directory .*load_model\('hf:DIR'\) or vitx explain --model hf:DIR"):
        vitx.load_model("hf:google/vit-base-patch16-224")


def test_no_network_is_detected_before_any_download(monkeypatch):
    """A hub that cannot be reached is found by one connection attempt; then timm is never asked to download
    and transformers reads its cache alone (no retries)."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://vitx-no-hub.invalid")
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm asked to download"))
    with pytest.raises(vitx.VitxError, match=r"the hub \(vitx-no-hub.invalid\) cannot be reached and its weights"):
        vitx.load_model("timm:vit_tiny_patch16_224")
    from transformers import AutoModelForImageClassification
    calls = []
    monkeypatch.setattr(AutoModelForImageClassification, "from_pretrained",
                        lambda source, **kw: calls.append(kw) or (_ for _ in ()).throw(OSError("not cached")))
    with pytest.raises(vitx.VitxError, match=r"cannot be reached and the model is not in the local cache"):
        vitx.load_model("hf:google/vit-base-patch16-224")
    assert calls == [{"local_files_only": True}]


def test_offline_timm_weights_from_the_cache(offline, tmp_path, monkeypatch):
    """Offline, timm's weights are read from the hub cache when they are there."""
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224").eval()
    repo = timm.models.get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(source.state_dict(), str(snapshot / "snapshots" / ("0" * 40) / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = vitx.load_model("timm:vit_tiny_patch16_224")
    x = images(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_missing_timm_weights_file(tmp_path):
    with pytest.raises(vitx.VitxError, match="weights file .*absent.safetensors.* does not exist"):
        vitx.load_model("timm:vit_tiny_patch16_224", weights=tmp_path / "absent.safetensors")


def test_timm_weights_that_do_not_fit(tmp_path):
    """timm's own loading error, every key of it on one line."""
    path = tmp_path / "ten.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=10).state_dict(), str(path))
    with pytest.raises(vitx.VitxError, match=r"^could not load weights for timm model 'vit_tiny_patch16_224' from the "
                       r"file '.*ten.safetensors': shapes differ: head.weight \(10x192 in the file, 1000x192 in the "
                       r"model\), head.bias \(10 in the file, 1000 in the model\)$"):
        vitx.load_model("timm:vit_tiny_patch16_224", weights=path)


def test_file_that_does_not_fit(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(foreign))
    with pytest.raises(vitx.VitxError, match="does not fit architecture 'vit_small_patch16_224': missing"):
        vitx.load_model(foreign, arch="vit_small_patch16_224", **ARCH)
    small = tmp_path / "small.safetensors"
    save_file(tiny_timm().state_dict(), str(small))
    with pytest.raises(vitx.VitxError) as err:
        vitx.load_model(small, arch="vit_small_patch16_224", **{**ARCH, "embed_dim": 32})
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"{str(small)!r} does not fit architecture 'vit_small_patch16_224': "
        "shapes differ: cls_token (1x1x64 in the file, 1x1x32 in the model), ")
    assert "blocks.*.attn.qkv.weight (192x64 in the file, 96x32 in the model) ×3" in message
    assert "head.weight (5x64 in the file, 5x32 in the model)" in message and "missing" not in message
    with pytest.raises(vitx.VitxError, match="does not say its architecture"):
        vitx.load_model(small)
    with pytest.raises(vitx.VitxError, match="unknown architecture 'vit_huge'"):
        vitx.load_model(small, arch="vit_huge")


@pytest.mark.parametrize("net", [nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torchvision.models.resnet18()],
                         ids=["sequential", "resnet18"])
def test_module_the_tap_cannot_inspect(net):
    with pytest.raises(vitx.VitxError, match="vitx cannot inspect a torch"):
        vitx.load_model(net)


def test_unknown_setting():
    with pytest.raises(vitx.VitxError, match="unknown model setting 'depth'"):
        vitx.load_model(create_model("vit_small_patch16_224", **VITX_SMALL), depth=3)


# --- preprocessing -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return vitx.load_model(create_model("vit_small_patch16_224", **VITX_SMALL))


def constant(model, *rgb):
    """The model input of an image of one colour given in [0, 1]."""
    return model.normalize(torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 64, 64))


def test_every_kind_of_rgb_input_agrees(model, tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    uint8_tensor = torch.from_numpy(array).permute(2, 0, 1)
    tensor = uint8_tensor.float() / 255
    inputs = [array, Image.fromarray(array), path, str(path), tensor, uint8_tensor]
    batch = model.preprocess(inputs)
    assert batch.shape == (6, 3, 64, 64) and batch.dtype == torch.float32
    for i in range(1, 6):
        close(batch[i], batch[0], rtol=1e-6)
    close(model.preprocess(tensor[None].expand(2, -1, -1, -1)), batch[:2], rtol=1e-6)
    assert not torch.allclose(batch[0, :, :32], batch[0, :, 32:])


def test_grayscale_rgba_and_16_bit(model, tmp_path):
    close(model.preprocess(Image.new("L", (30, 20), 51)), constant(model, 0.2, 0.2, 0.2), rtol=1e-5)
    close(model.preprocess(np.full((20, 30), 51, np.uint8)), constant(model, 0.2, 0.2, 0.2), rtol=1e-5)
    transparent = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    opaque = Image.new("RGBA", (30, 20), (255, 0, 0, 255))
    close(model.preprocess(transparent), constant(model, 1, 1, 1), rtol=1e-5)     # composited on white
    close(model.preprocess(opaque), constant(model, 1, 0, 0), rtol=1e-5)
    for level in (13107, 200):                         # a dark 16-bit image is still read as 16-bit
        path = tmp_path / f"deep{level}.png"
        Image.fromarray(np.full((20, 30), level, np.uint16)).save(path)
        assert Image.open(path).mode == "I;16"
        grey = level / 65535
        close(model.preprocess(path), constant(model, grey, grey, grey), rtol=1e-5)
