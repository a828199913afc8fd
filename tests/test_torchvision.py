"""torchvision's ViT: what the adapter reads off it, the tap's attention module, and ``torchvision:<name>``
loading from a local weights file or the torch hub cache, with a one-line error where neither is there and
the download host cannot be reached (the family checks themselves are in test_timm_families.py)."""
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision import models

import vitx
import vitx.adapters.torchvision as adapter
from families_torchvision import SMALL
from reference import images, jitter, snapshot
from vitx.adapters.hub import unreachable
from vitx.cli import main

NAME = "vit_b_32"                       # the smallest of torchvision's ViTs (88M parameters, 7x7 patches at 224)
WEIGHTS = models.get_model_weights(NAME).DEFAULT
CIRCLE = Path(vitx.__file__).parent / "data" / "samples" / "1_circle.png"


def test_describe():
    torch.manual_seed(0)
    model = vitx.load_model(jitter(torchvision.models.VisionTransformer(**SMALL)))
    c = model.config
    assert (c.image_size, c.patch_size, c.num_classes, c.num_prefix_tokens, c.cls_index, c.pooling) == \
        ((64, 64), (8, 8), 5, 1, 0, "cls")
    assert model.adapter.framework == "torchvision" and len(model.adapter.blocks()) == 3
    assert model.layout(images(1, 3, 64, 64)).grid == (8, 8)
    with pytest.raises(vitx.VitxError, match="this model takes 64x64 images, got 64x96"):
        vitx.explain(model, images(1, 3, 64, 96), method="rollout")


def test_need_weights_under_the_tap_is_refused_and_undone():
    torch.manual_seed(0)
    net = jitter(torchvision.models.VisionTransformer(**SMALL))
    before = snapshot(net)
    attention = net.encoder.layers[0].self_attention
    tokens = torch.randn(1, 65, 64)
    with pytest.raises(vitx.VitxError, match=r"gives no weights of its own \(need_weights=True\): read them from "
                                             r"the tap \(tr.attentions\)$"):
        with vitx.trace(net):
            attention(tokens, tokens, tokens)
    assert snapshot(net) == before


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(a random vit_b_32, its state dict saved as .pth and as .safetensors)."""
    torch.manual_seed(0)
    net = models.get_model(NAME).eval()
    directory = tmp_path_factory.mktemp("torchvision")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save(state, directory / "weights.pth")
    save_file(state, str(directory / "weights.safetensors"))
    return net, directory


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_from_a_local_weights_file(source, suffix):
    net, directory = source
    model = vitx.load_model(f"torchvision:{NAME}", weights=directory / f"weights{suffix}")
    transforms = WEIGHTS.transforms()
    c = model.config
    assert c.name == f"torchvision:{NAME}" and c.class_names == tuple(WEIGHTS.meta["categories"])
    assert c.mean == tuple(transforms.mean) and c.std == tuple(transforms.std) and c.image_size == (224, 224)
    assert c.class_names[1] == "goldfish" and c.num_classes == 1000 and c.patch_size == (32, 32)
    x = images(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


def test_load_from_the_torch_hub_cache_without_the_network(source, tmp_path, monkeypatch):
    net, directory = source
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / WEIGHTS.url.rsplit("/", 1)[-1]).symlink_to(directory / "weights.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(adapter, "unreachable", lambda *_: pytest.fail("the download host probed"))
    x = images(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(vitx.load_model(f"torchvision:{NAME}")(x), net(x))


def test_offline_without_a_file_names_the_file_to_provide(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(adapter, "unreachable", lambda url, what: f"{what} (download.pytorch.org) cannot be reached")
    monkeypatch.setattr(models, "get_model", lambda *a, **k: pytest.fail("torchvision asked to build or download"))
    with pytest.raises(vitx.VitxError, match=r"^torchvision model 'vit_b_16': the download host "
                       r"\(download.pytorch.org\) cannot be reached and its weights \(vit_b_16-c867db91.pth\) are not "
                       r"in the torch hub cache; pass a local file: load_model\('torchvision:vit_b_16', "
                       r"weights='FILE'\) or vitx explain --model torchvision:vit_b_16 --weights FILE$"):
        vitx.load_model("torchvision:vit_b_16")


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(adapter, "unreachable", lambda *_: None)

    def download(name, weights=None, **kw):
        assert weights is models.get_model_weights(name).DEFAULT
        raise OSError("connection reset by peer\nmore")
    monkeypatch.setattr(models, "get_model", download)
    with pytest.raises(vitx.VitxError, match=r"^could not download the weights of torchvision model 'vit_b_16' "
                       r"\(https://download.pytorch.org/models/vit_b_16-c867db91.pth\): connection reset by peer$"):
        vitx.load_model("torchvision:vit_b_16")


def test_the_probe_finds_an_unreachable_host():
    assert unreachable("https://vitx-no-host.invalid/models/x.pth", "the download host") == \
        "the download host (vitx-no-host.invalid) cannot be reached"


@pytest.mark.parametrize("source, weights, message", [
    ("torchvision:vit_nope", None, r"^torchvision has no model named 'vit_nope'; vitx reads torchvision's vit_b_16, "
                                   r"vit_b_32, vit_h_14, vit_l_16, vit_l_32$"),
    ("torchvision:resnet50", None, r"^torchvision's 'resnet50' is no Vision Transformer; vitx reads"),
    (f"torchvision:{NAME}", "absent.pth", r"^weights file '.*absent.pth' for torchvision model 'vit_b_32' does not "
                                          r"exist$"),
    (f"torchvision:{NAME}", "other.safetensors", r"^could not load weights for torchvision model 'vit_b_32' from the "
                                                 r"file '.*other.safetensors': missing: .*; unexpected: head.weight$"),
    (f"torchvision:{NAME}", "notes.pth", r"^could not load weights for torchvision model 'vit_b_32' from the file "
                                         r"'.*notes.pth': "),
    ("shapes-vit", "absent.pth", r"^weights= applies to 'timm:<name>', 'torchvision:<name>' and 'open_clip:<arch>' "
                                  r"models only"),
])
def test_bad_sources_and_files(tmp_path, source, weights, message):
    save_file({"head.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(vitx.VitxError, match=message):
        vitx.load_model(source, weights=None if weights is None else str(tmp_path / weights))


def test_cli_passes_weights_for_torchvision(source, tmp_path, capsys):
    _, directory = source
    out = tmp_path / "out"
    code = main(["explain", str(CIRCLE), "--model", f"torchvision:{NAME}", "--weights", str(directory / "weights.pth"),
                 "--method", "rollout", "--out", str(out)])
    assert code == 0 and (out / "grid.png").is_file()
    code = main(["explain", str(CIRCLE), "--model", "shapes-vit", "--weights", str(directory / "weights.pth"),
                 "--method", "rollout", "--out", str(tmp_path / "none")])
    assert code != 0 and "--weights is for timm:<name> and torchvision:<name> models only" in capsys.readouterr().err
