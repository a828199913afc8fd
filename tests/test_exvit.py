"""eX-ViT (issue 18): its mechanisms on hand-built cases (E-MHA, AttE, the two attribute losses), its recipe, and the
method 'ex-vit' (batched against one image at a time, refused on a model without eX-ViT's parts). Every formula is
OURS (vitx.models.exvit): these tests pin what we built."""
from __future__ import annotations

import math

import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.models import create_model
from vitx.models.exvit import AttributeExplainer, ExplainableAttention, discriminability_loss, diversity_loss
from vitx.training.run import train
from vitx.zoo import ZOO_DIR


def test_emha_gates_each_value_by_its_saliency():
    """One head, q = 0 so A = 1/3 everywhere, v = x, output projection the identity, gate s_j = σ(x_j[0]):
    x_1 = (0, 1, 0, 0) and x_3 = (0, 0, 0, 4) get s = 1/2, x_2 = (ln 3, 0, 2, 0) gets s = 3/4, so every token's
    output is (1/3)(x_1/2 + 3 x_2/4 + x_3/2) = (ln 3 / 4, 1/6, 1/2, 2/3)."""
    attn = ExplainableAttention(4, 1, qkv_bias=True)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.weight[8:] = torch.eye(4)
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(4))
        attn.proj.bias.zero_()
        attn.gate.weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
        attn.gate.bias.zero_()
    x = torch.tensor([[[0, 1, 0, 0], [math.log(3), 0, 2, 0], [0, 0, 0, 4.0]]])
    expected = torch.tensor([math.log(3) / 4, 1 / 6, 1 / 2, 2 / 3]).expand(1, 3, 4)
    assert torch.allclose(attn(x), expected, atol=1e-6)
    weights = attn.explainable_weights(x)                    # Ã_ij = A_ij s_j
    assert torch.allclose(weights, torch.tensor([0.5, 0.75, 0.5]).div(3).expand(1, 1, 3, 3), atol=1e-6)


def test_atte_attribute_maps_and_features():
    """W = I, D = 2 (scale 1/√2), p_1 = (√2 ln 2, 0): scores (ln 2, 0, 0) on x = (1, 0), (0, 1), (0, 0), so
    a_1 = (1/2, 1/4, 1/4) and f_1 = (1/2, 1/4); p_2 = 0: a_2 uniform, f_2 = (1/3, 1/3)."""
    atte = AttributeExplainer(2, 2)
    with torch.no_grad():
        atte.queries.copy_(torch.tensor([[math.sqrt(2) * math.log(2), 0], [0, 0]]))
        atte.key.weight.copy_(torch.eye(2))
        atte.key.bias.zero_()
    maps, features = atte(torch.tensor([[[1.0, 0], [0, 1], [0, 0]]]))
    assert torch.allclose(maps, torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]), atol=1e-6)
    assert torch.allclose(features, torch.tensor([[[0.5, 0.25], [1 / 3, 1 / 3]]]), atol=1e-6)


def test_discriminability_loss_by_hand():
    """Label 0; attribute 1's logits (0, 0): CE = ln 2; attribute 2's (ln 3, 0): CE = ln(4/3); mean ln(8/3) / 2."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])
    assert discriminability_loss(logits, torch.tensor([0])).item() == pytest.approx(math.log(8 / 3) / 2, abs=1e-6)


@pytest.mark.parametrize("maps, expected", [
    ([[1.0, 0, 0], [0, 1, 0]], 0.0),                     # disjoint attributes
    ([[0.5, 0.5, 0], [1, 0, 0]], 1 / math.sqrt(2)),      # cos = (1/2) / (√(1/2) · 1)
    ([[1.0, 0], [1, 0], [0, 1]], 1 / 3),                 # pairs (1, 2) = 1, (1, 3) = (2, 3) = 0: 2 of 6 ordered pairs
])
def test_diversity_loss_by_hand(maps, expected):
    assert diversity_loss(torch.tensor([maps])).item() == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    return create_model("exvit_shapes").eval()


def test_class_map_sums_to_the_logit(fresh):
    """AttE's logits are linear in the patch tokens: Σ_n M_t(n) = y_t − b_t."""
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 5, 7])
    with torch.no_grad():
        features = fresh.forward_features(x)
        maps, attributes = fresh.class_maps(fresh.attributes(features), targets)
        logits = fresh.forward_head(features)
    assert maps.shape == (3, 64) and attributes.shape == (3, 2, 64)
    assert torch.allclose(attributes.sum(-1), torch.ones(3, 2), atol=1e-5)
    assert torch.allclose(maps.sum(1), logits[torch.arange(3), targets] - fresh.head.bias[targets], atol=1e-5)


def test_the_tap_runs_the_model_as_it_is(fresh):
    """E-MHA's gate is on the values, so the tap's explicit attention product gives the model's own logits, and it
    records the last block's (plain softmax) attention."""
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = fresh(x)
        with vitx.trace(fresh) as tr:
            tapped = fresh(x)
    assert torch.allclose(plain, tapped, atol=1e-5) and len(tr.attentions) == 6


def test_recipe_starts_from_shapes_vit_and_writes_its_card(tmp_path):
    (tmp_path / "shapes-vit.safetensors").symlink_to(ZOO_DIR / "shapes-vit.safetensors")
    metrics = train("shapes-vit-exvit", tmp_path, seed=1, steps=1, batch_size=4, progress=False)
    assert 0 <= metrics["class_map_miou"] <= 1 and metrics["accuracy"] > 0.5   # the body is shapes-vit's
    card = (tmp_path / "shapes-vit-exvit.md").read_text()
    for fact in ("vitx train shapes-vit-exvit --seed 1 --steps 1", "OURS", "E-MHA in the last 1 block",
                 "2 attribute maps", f"**{metrics['class_map_miou']:.3f}**", "masks are never read in training"):
        assert fact in card, fact
    net = vitx.load_model(tmp_path / "shapes-vit-exvit.safetensors").net
    start = vitx.load_model("shapes-vit").net
    # one AdamW step of lr 3e-4 away from shapes-vit's body, final norm (now the patches') and head (now AttE's)
    for ours, theirs in ((net.blocks[5].attn.qkv, start.blocks[5].attn.qkv), (net.fc_norm, start.norm),
                         (net.head, start.head)):
        assert torch.allclose(ours.weight, theirs.weight, atol=1e-3)


@pytest.fixture(scope="module")
def exvit():
    return vitx.load_model("shapes-vit-exvit")


def test_loads_with_a_patch_reading_head(exvit):
    config = exvit.config
    assert (config.kind, config.pooling, config.cls_index) == ("vit", "avg", 0)


def test_batched_equals_one_image_at_a_time(exvit):
    x = exvit.normalize(shapes(n=6, seed=30_000).images)
    together = vitx.explain(exvit, x, method="ex-vit")
    alone = [vitx.explain(exvit, x[i:i + 1], method="ex-vit") for i in range(6)]
    assert torch.allclose(together.token_maps, torch.cat([e.token_maps for e in alone]), atol=1e-5)
    assert torch.equal(together.targets, torch.cat([e.targets for e in alone]))
    attributes = torch.tensor(together.details["attribute_maps"])
    assert attributes.shape == (6, 2, 8, 8)
    assert torch.allclose(attributes, torch.cat([torch.tensor(e.details["attribute_maps"]) for e in alone]), atol=1e-5)


def test_target_changes_the_class_map(exvit):
    x = exvit.normalize(shapes(n=2, seed=30_001).images)
    own = vitx.explain(exvit, x, method="ex-vit")
    other = vitx.explain(exvit, x, method="ex-vit", target=(own.targets + 1) % 8)
    assert not torch.allclose(own.token_maps, other.token_maps)
    assert own.details["attribute_maps"] == other.details["attribute_maps"]


@pytest.mark.parametrize("method", ["generic-attention", "rollout", "gradcam"])
def test_existing_methods_run_on_exvit(exvit, method):
    x = exvit.normalize(shapes(n=2, seed=30_002).images)
    maps = vitx.explain(exvit, x, method=method).maps
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()


def test_refused_on_a_model_without_exvits_parts():
    model = vitx.load_model("shapes-vit")
    with pytest.raises(vitx.VitxError, match="has none: use an eX-ViT") as err:
        vitx.explain(model, model.normalize(shapes(n=1, seed=30_003).images), method="ex-vit")
    assert "\n" not in str(err.value)
