"""Patch Slimming (vitx.pruning.slimming, the method patch-slimming and its zoo twin shapes-vit-slim): the impact
score by hand and against the explicit sum over head paths, the top-down nesting of the masks, the pruned forward
against the model's, the targets' validation, the method through vitx.explain with its refusals, and the accuracy
and FLOPs gates of issue 17 on fresh images."""
import itertools

import pytest
import torch

import vitx
from vitx.checkpoint import fingerprint, read_metadata
from vitx.data import shapes
from vitx.errors import StaleModuleError, VitxError
from vitx.flops import count_flops
from vitx.methods.pruning.twins import load_pruned
from vitx.models import create_model
from vitx.pruning.slimming import Slimmed, impact, masks_at, path_energy, search
from vitx.training import slimming as slimming_recipe
from vitx.training import train
from vitx.zoo import ZOO_DIR


def tiny(depth=4, seed=0):
    """A vitx ViT of 4 x 4 patches, 8 dimensions, 2 heads, random weights."""
    torch.manual_seed(seed)
    return create_model("vitx_shapes", depth=depth, embed_dim=8, num_heads=2, image_size=32).eval()


def images(n=6, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- the impact score ---------------------------------------------------------------------------------------------

def test_path_energy_by_hand():
    """One block above, which keeps the class token alone: G[i, i] = mean_h P^h[cls, i]²."""
    P = torch.tensor([[[[0.5, 0.5, 0.0]], [[0.0, 0.2, 0.8]]]])          # (B=1, H=2, 1 kept row, 3 tokens)
    torch.testing.assert_close(path_energy([P], 3), torch.tensor([[0.125, 0.145, 0.32]]))


def test_path_energy_is_the_mean_over_every_head_path():
    """Two blocks above (4 -> 3 -> 1 tokens): the recursion equals Σ over the H² head paths of ‖A[:, i]‖² / H²."""
    g = torch.Generator().manual_seed(0)
    first = torch.rand(2, 3, 3, 4, generator=g).softmax(-1)            # (B, H, kept rows, input tokens)
    second = torch.rand(2, 3, 1, 3, generator=g).softmax(-1)
    paths = sum((second[:, b] @ first[:, a]).square().sum(1) for a, b in itertools.product(range(3), repeat=2)) / 9
    torch.testing.assert_close(path_energy([first, second], 4), paths)


def test_impact_under_uniform_attention_by_hand():
    """With every query and key weight zero, attention is uniform over the n tokens a block reads: every path's A
    is (1/N) everywhere on the r rows the last block keeps, whatever the masks between, and U[i, :] = mean_j |Z_j|
    for every i, so s_i = r ‖mean_j |Z_j|‖² / N²."""
    vit = tiny(depth=3)
    for block in vit.blocks:
        block.attn.qkv.weight.data[:16] = 0
        block.attn.qkv.bias.data[:16] = 0
    x = images(2)
    with torch.no_grad():
        z = vit.embed(x)
        expected = (z.abs().mean(1).square().sum(-1) / 17 ** 2)[:, None].expand(2, 17)
        for masks in ([None, [], []], [None, [0, 5, 9], []], [None, [0, 5, 9], [5]]):
            torch.testing.assert_close(impact(vit, x, masks, 0), expected * (1 + len(masks[-1])))


# --- masks and the pruned forward ---------------------------------------------------------------------------------

def test_search_nests_the_masks_top_down_and_meets_its_target():
    vit, x = tiny(), images()
    masks, tolerance, measured = search(vit, x, flops=0.8)
    assert masks[-1] == [] and 0 <= tolerance <= 1
    assert all(set(later) <= set(earlier) for earlier, later in zip(masks, masks[1:]))
    assert measured == count_flops(Slimmed(vit, masks), x[:1]) / count_flops(vit, x[:1]) <= 0.8
    keep, _, share = search(vit, x, keep=0.5)
    assert share == sum(map(len, keep)) / (4 * 16) <= 0.5


def test_zero_tolerance_keeps_every_patch_with_an_impact():
    vit, x = tiny(), images()
    assert masks_at(vit, x, 0.0) == [list(range(16))] * 3 + [[]]


def test_pruned_forward_with_every_patch_kept_is_the_models():
    """All patches kept: the model's logits; and the last block's class token alone reads every token, so dropping
    the others' outputs there changes nothing either."""
    vit, x = tiny(), images()
    every = list(range(16))
    with torch.no_grad():
        for masks in ([every] * 4, [every] * 3 + [[]]):
            torch.testing.assert_close(Slimmed(vit, masks)(x), vit(x), atol=1e-5, rtol=1e-5)


def test_pruned_forward_computes_only_the_kept_tokens():
    """A twin whose block 1 computes 4 patches costs less than one computing them all, and its logits are those of
    the model whose block 1 reads every token (as keys and values) and whose later blocks see only those 4."""
    vit, x = tiny(), images()
    kept = [3, 6, 9, 12]
    masks = [list(range(16)), kept, kept, []]
    with torch.no_grad():
        tokens = vit.blocks[:2](vit.embed(x))[:, [0] + [1 + p for p in kept]]
        expected = vit.forward_head(vit.norm(vit.blocks[2:](tokens)))
        torch.testing.assert_close(Slimmed(vit, masks)(x), expected, atol=1e-5, rtol=1e-5)
    assert count_flops(Slimmed(vit, masks), x[:1]) < count_flops(Slimmed(vit, [list(range(16))] * 4), x[:1])


@pytest.mark.parametrize("target", [0, -0.1, 1.5, "0.5", True, float("nan")])
def test_targets_outside_zero_one_are_refused(target):
    with pytest.raises(VitxError, match="target is a share of the original model's, in \\(0, 1\\]"):
        search(tiny(), images(2), flops=target)


def test_bad_masks_and_requests_are_refused():
    vit, x = tiny(), images(2)
    with pytest.raises(VitxError, match="one target: flops or keep"):
        search(vit, x, flops=0.5, keep=0.5)
    with pytest.raises(VitxError, match="one target"):
        search(vit, x)
    with pytest.raises(VitxError, match="must nest"):
        Slimmed(vit, [[1], [1, 2], [], []])
    with pytest.raises(VitxError, match="one mask per block"):
        Slimmed(vit, [[16], [], [], []])
    with pytest.raises(VitxError, match="cannot reach the target"):
        search(vit, x, flops=0.01)


# --- the method and the zoo's twin --------------------------------------------------------------------------------

TEST_SEED = 10_000   # the model card's test images


@pytest.fixture(scope="module")
def pair():
    """shapes-vit and its slimmed twin from the zoo."""
    return vitx.load_model("shapes-vit"), load_pruned(ZOO_DIR / "shapes-vit-slim.safetensors", "cpu")


def test_patch_slimming_through_explain(pair, tmp_path):
    model, twin = pair
    x = model.normalize(shapes(n=4, seed=40_000).images)
    exp = vitx.explain(model, x, "patch-slimming", normalize=False)
    assert exp.token_maps.shape == (4, 8, 8) and exp.maps.shape == (4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exp.token_maps.flatten(1), impact(twin.vit, x, twin.masks, 0)[:, 1:])
        assert exp.details["pruned_prediction"] == twin(x).argmax(-1).tolist()
    assert exp.details["kept"] == [twin.masks] * 4                         # dataset-level: one set for every image
    assert exp.details["stage_blocks"] == [list(range(6))] * 4
    other = vitx.explain(model, x, "patch-slimming", target=0, normalize=False)
    torch.testing.assert_close(other.token_maps, exp.token_maps)           # the score has no target
    assert exp.stages(0).size[0] > exp.stages(0).size[1]
    exp.save(tmp_path)
    assert (tmp_path / "000_patch-slimming_stages.png").exists()


REFUSALS = [("random", {}, VitxError, "needs a Patch Slimming twin module trained for this model"),
            ("random", {"module": "shapes-vit-slim"}, StaleModuleError, "trained for other weights of 'shapes-vit'"),
            ("shapes-vit", {"module": "shapes-vit-iared2"}, VitxError, "is not a Patch Slimming twin module")]


@pytest.mark.parametrize("weights, params, error, message", REFUSALS)
def test_patch_slimming_refuses_other_weights_and_modules(pair, weights, params, error, message):
    """A vitx_shapes ViT with random weights (by the fingerprint the twin records), a module of another kind."""
    model = pair[0]
    if weights == "random":
        model = vitx.load_model(create_model("vitx_shapes"), class_names=model.config.class_names,
                                mean=model.config.mean, std=model.config.std)
    with pytest.raises(error, match=message):
        vitx.explain(model, model.normalize(shapes(n=2, seed=40_001).images), "patch-slimming", **params)


def test_the_twin_is_no_classifier():
    with pytest.raises(VitxError, match="Patch Slimming twin"):
        vitx.load_model("shapes-vit-slim")


def test_twin_keeps_accuracy_with_fewer_flops(pair):
    """Issue 17's gates on the 1,000 fresh images of the model card: accuracy at least 0.983 (shapes-vit's 0.998
    less 1.5 points), at least 30% fewer FLOPs than shapes-vit at batch 1."""
    model, twin = pair
    data = shapes(n=1000, seed=TEST_SEED)
    x = model.normalize(data.images)
    with torch.no_grad():
        predicted = torch.cat([twin(x[i:i + 250]).argmax(-1) for i in range(0, 1000, 250)])
    accuracy = (predicted == data.labels).float().mean().item()
    assert accuracy >= 0.983, accuracy
    saved = 1 - count_flops(twin, x[:1]) / count_flops(model.net, x[:1])
    assert saved >= 0.30, f"{saved:.1%} fewer FLOPs"
    assert all(set(later) <= set(earlier) for earlier, later in zip(twin.masks, twin.masks[1:]))


# The per-image map's quality gates are in tests/test_pruning_quality.py, beside the other pruning methods'.


def test_recipe_writes_a_twin_the_method_reads(tmp_path, pair, monkeypatch):
    model = pair[0]
    (tmp_path / "shapes-vit.safetensors").symlink_to(ZOO_DIR / "shapes-vit.safetensors")
    monkeypatch.setattr(slimming_recipe, "TEST_IMAGES", 20)
    monkeypatch.setattr(slimming_recipe, "CALIBRATION", 8)
    metrics = train("shapes-vit-slim", tmp_path, steps=2, batch_size=4, progress=False)
    assert set(metrics) >= {"accuracy", "flops", "original_flops", "images_per_second", "kept"}
    assert metrics["flops"] <= 0.65 * metrics["original_flops"]
    path = tmp_path / "shapes-vit-slim.safetensors"
    meta = read_metadata(path)
    assert (meta["kind"], meta["explains"], meta["ratio"]["flops"]) == ("slimming", "shapes-vit", 0.65)
    assert [len(m) for m in meta["stages"]] == metrics["kept"] and meta["stages"][-1] == []
    assert meta["fingerprints"] == [fingerprint(model.net)]
    assert "Theorem 1" in (tmp_path / "shapes-vit-slim.md").read_text()
    x = model.normalize(shapes(n=2, seed=40_002).images)
    assert vitx.explain(model, x, "patch-slimming", module=str(path)).token_maps.shape == (2, 8, 8)
