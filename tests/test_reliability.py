"""Reliability of explain() itself: frozen and inference-mode models, memory-bounded chunks, stale explainers."""
from __future__ import annotations

import copy
import sys

import pytest
import torch

import vitx
from vitx.errors import StaleModuleError
from vitx.memory import graph_bytes, parse_size, plan
from vitx.registry import get_method, method_names
from reference import OWN_ARCHITECTURE, tiny_explainer

CHEAP = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 4}, "rise": {"masks": 64},
         "kernel-shap": {"samples": 64}, "beyond-intuition-head": {"steps": 4}, "beyond-intuition-token": {"steps": 4}}
SAMPLES = ["src/vitx/data/samples/1_circle.png", "src/vitx/data/samples/18_star.png"]
CAPTIONED = ["src/vitx/data/samples/captions/red_cross_and_orange_square.png"]


@pytest.fixture(scope="module")
def vit():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def nest():
    return vitx.load_model("shapes-nest")


@pytest.fixture(scope="module")
def hvt():
    return vitx.load_model("shapes-hvt")


def frozen_twin(model: vitx.Model) -> vitx.Model:
    net = copy.deepcopy(model.net).requires_grad_(False)
    return vitx.load_model(net, **{k: getattr(model.config, k) for k in ("mean", "std", "class_names", "name")})


@pytest.fixture(scope="module")
def clip():
    return vitx.load_model("shapes-clip")


@pytest.mark.parametrize("name", method_names())
def test_every_method_gives_the_same_maps_on_a_frozen_model(name, vit, nest, hvt, clip):
    kinds = get_method(name).kinds
    model = vit if "vit" in kinds else nest if "nest" in kinds else hvt if "hvt" in kinds else clip
    if name in OWN_ARCHITECTURE:
        model = vitx.load_model(OWN_ARCHITECTURE[name])
    x = model.preprocess(CAPTIONED if model is clip else SAMPLES)
    params = CHEAP.get(name, {})   # vit-shapley: the zoo's explainer, whose fingerprint the twin shares
    if model is clip:
        params = {**params, "text": ["a red cross", "a square"]}
    trainable = vitx.explain(model, x, name, **params)
    twin = frozen_twin(model)
    frozen = vitx.explain(twin, x, name, **params)
    assert not any(p.requires_grad for p in twin.net.parameters())        # never touched
    torch.testing.assert_close(frozen.maps, trainable.maps)
    torch.testing.assert_close(frozen.targets, trainable.targets)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("name", ["generic-attention", "transformer-attribution", "saliency", "lrp", "rollout"])
def test_gradient_methods_work_under_the_callers_no_grad_or_inference_mode(name, mode, vit):
    x = vit.preprocess(SAMPLES)
    expected = vitx.explain(vit, x, name).maps
    with mode():
        got = vitx.explain(vit, x, name).maps
    torch.testing.assert_close(got, expected)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ["saliency", "rollout"])
def test_weights_made_under_inference_mode_are_refused_in_one_line(name):
    with torch.inference_mode():
        model = vitx.load_model("shapes-vit")
        x = model.preprocess(SAMPLES)
    with pytest.raises(vitx.VitxError, match="made under torch.inference_mode"):
        vitx.explain(model, x, name)


def test_a_budget_smaller_than_batch_size_splits_into_chunks_with_the_same_maps(vit):
    x = vit.preprocess(SAMPLES * 3)
    info = get_method("transformer-attribution")
    unit = graph_bytes(vit, x[:1].clone())
    per_image, per_pass = info.memory(info.defaults)
    budget = int(unit * (per_pass + 2.5 * per_image))             # room for two images, not six
    assert plan(info, info.defaults, vit, x, 32, budget) == (2, info.defaults)
    whole = vitx.explain(vit, x, "transformer-attribution", batch_size=32, memory="1TB")
    chunked = vitx.explain(vit, x, "transformer-attribution", batch_size=32, memory=budget)
    torch.testing.assert_close(chunked.maps, whole.maps)


def test_a_budget_too_small_for_one_image_fails_before_any_work_saying_what_it_needs(vit, monkeypatch):
    x = vit.preprocess(SAMPLES)
    calls = []
    monkeypatch.setattr(sys.modules["vitx.explain"], "Batch", lambda *a, **k: calls.append(1))
    with pytest.raises(vitx.VitxError, match=r"needs about [\d.]+ MB for one image .* budget of 0.098 MB"):
        vitx.explain(vit, x, "generic-attention", memory="100KB")
    assert not calls


def test_stacked_copies_shrink_to_fit_the_budget_with_a_warning_and_the_same_maps(vit):
    x = vit.preprocess(SAMPLES)
    info = get_method("integrated-gradients")
    unit = graph_bytes(vit, x[:1].clone())
    params = info.bind({"steps": 8, "internal_batch_size": 16})
    budget = int(unit * 6.5)                        # 1 graph per image + 1 per copy: room for 5 copies, not 16
    with pytest.warns(UserWarning, match="internal_batch_size lowered from 16 to 5"):
        step, lowered = plan(info, params, vit, x, 32, budget)
    assert (step, lowered["internal_batch_size"]) == (1, 5)
    whole = vitx.explain(vit, x, "integrated-gradients", steps=8, internal_batch_size=16, memory="1TB")
    with pytest.warns(UserWarning, match="lowered"):
        fitted = vitx.explain(vit, x, "integrated-gradients", steps=8, internal_batch_size=16, memory=budget)
    torch.testing.assert_close(fitted.maps, whole.maps)
    assert fitted.params["internal_batch_size"] == 5


def test_the_graph_probe_counts_activations_not_weights():
    from vitx.models import ViTConfig, VisionTransformer
    graphs = []
    for classes in (8, 4000):                       # a 2 MB larger head: weights, not per-image activations
        torch.manual_seed(0)
        net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2,
                                          num_classes=classes))
        model = vitx.load_model(net)
        graphs.append(graph_bytes(model, torch.randn(1, 3, 32, 32)))
    assert 0 <= graphs[1] - graphs[0] <= 2 * 4000 * 4   # at most the logits grow, not by the 2 MB of weights
    assert graphs[0] > 2 * 17 * 128 * 4 * 4              # several (N, D) float tensors per block


@pytest.mark.parametrize("text,size", [("4GB", 4 * 2 ** 30), ("512 MB", 512 * 2 ** 20), ("1.5G", int(1.5 * 2 ** 30)),
                                       (1000, 1000), ("2048", 2048)])
def test_memory_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, True])
def test_bad_memory_sizes_are_one_line(bad):
    with pytest.raises(vitx.VitxError, match="memory must be"):
        parse_size(bad)


def test_every_method_declares_its_memory():
    for name in method_names():
        info = get_method(name)
        per_image, per_pass = info.memory(info.defaults)
        assert per_image > 0 and per_pass >= 0, name
        assert "graph/image" in info.row()["memory"]


# --- stale explainers ------------------------------------------------------------------------------

def perturbed(model: vitx.Model) -> vitx.Model:
    net = copy.deepcopy(model.net)
    with torch.no_grad():
        net.head.bias[0] += 1e-3
    return vitx.load_model(net, **{k: getattr(model.config, k) for k in ("mean", "std", "class_names", "name")})


def test_vit_shapley_refuses_a_perturbed_copy_of_the_model_it_was_trained_for(vit):
    x = vit.preprocess(SAMPLES)
    assert vitx.explain(vit, x, "vit-shapley").maps.shape == (2, 64, 64)
    copy_ = perturbed(vit)
    with pytest.raises(StaleModuleError, match="trained for other weights of 'shapes-vit'.*allow_stale=True"):
        vitx.explain(copy_, x, "vit-shapley")
    knowingly = vitx.explain(copy_, x, "vit-shapley", allow_stale=True)
    assert torch.isfinite(knowingly.maps).all()


def test_vit_shapley_passes_adebayos_check_by_refusing_randomised_weights(vit):
    from vitx.metrics.sanity import randomization
    x = vit.preprocess(SAMPLES)
    targets = vit(x).argmax(-1)
    result = randomization(vit, x, targets, "vit-shapley")
    assert torch.isnan(result["randomization_spearman"]).all()
    assert torch.isfinite(randomization(vit, x, targets, "rollout")["randomization_spearman"]).all()


def test_an_explainer_without_fingerprints_is_refused_unless_allowed(vit, tmp_path):
    import json
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from vitx.checkpoint import META_KEY
    path = tiny_explainer(vit)
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
    del meta["fingerprints"]
    bare = tmp_path / "explainer.safetensors"
    save_file(load_file(path), str(bare), metadata={META_KEY: json.dumps(meta)})
    (tmp_path / "surrogate.safetensors").symlink_to(path.replace("explainer.safetensors", "surrogate.safetensors"))
    x = vit.preprocess(SAMPLES)
    with pytest.raises(StaleModuleError, match="records no fingerprint"):
        vitx.explain(vit, x, "vit-shapley", explainer=str(bare))
    assert vitx.explain(vit, x, "vit-shapley", explainer=str(bare), allow_stale=True).maps.shape == (2, 64, 64)
