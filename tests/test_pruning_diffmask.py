"""Vision DiffMask (vitx.pruning.diffmask, the method 'diffmask'): the hard-concrete gate, the Lagrangian, the
masking on a small random ViT; the trained zoo module through vitx.explain, its refusals and its quality gate."""
import math

import pytest
import torch

import vitx
from vitx.checkpoint import fingerprint, read_checkpoint, read_metadata
from vitx.data import shapes
from vitx.errors import StaleModuleError
from vitx.models import create_model
from vitx.models.vit import ViTConfig, VisionTransformer
from vitx.pruning.diffmask import (TEMPERATURE, DiffMask, Lagrangian, kl_to_original, log_keep_probability,
                                   masked_logits, read, sample_gates)
from vitx.zoo import ZOO_DIR


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                      num_classes=5)).eval().requires_grad_(False)
    return net, torch.randn(4, 3, 32, 32)


def test_expected_l0_is_the_probability_that_the_gate_is_not_zero():
    """Closed form σ(log α − β log(−l/r)) against a Monte Carlo estimate of P(z > 0) from 200,000 samples."""
    log_alpha = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    closed = log_keep_probability(log_alpha).exp()
    by_hand = torch.sigmoid(log_alpha - TEMPERATURE * math.log(0.1 / 1.1))   # (l, r) = (−0.1, 1.1)
    assert torch.allclose(closed, by_hand)
    n = 200_000
    z = sample_gates(log_alpha.expand(n, -1), generator=torch.Generator().manual_seed(0))
    estimate = (z > 0).float().mean(0)
    error = (closed * (1 - closed) / n).sqrt()
    assert ((estimate - closed).abs() < 4 * error).all(), (estimate, closed)
    # the stretch makes exact zeros and ones: the gate is hard; and log α = 0 keeps more than half (l is nearer 0)
    assert (z == 0).any() and (z == 1).any() and z.min() >= 0 and z.max() <= 1
    assert closed[2] > 0.5


def test_gates_are_differentiable_in_log_alpha():
    log_alpha = torch.zeros(1000, requires_grad=True)
    sample_gates(log_alpha, generator=torch.Generator().manual_seed(1)).sum().backward()
    assert (log_alpha.grad >= 0).all() and log_alpha.grad.sum() > 0


@pytest.mark.parametrize("kl, grows", [(0.5, True), (0.02, False)])
def test_multiplier_grows_while_the_kl_exceeds_epsilon(kl, grows):
    lagrangian = Lagrangian(3, epsilon=0.1, start=1.0, lr=0.3)
    for _ in range(3):
        lagrangian.ascend(1, torch.full((8,), kl))
    values = lagrangian.values()
    assert (values[1] > 1.0) == grows and values[1] != 1.0
    assert values[0] == values[2] == 1.0          # the other layers' multipliers keep still


def test_multiplier_stays_within_its_bounds():
    lagrangian = Lagrangian(1, epsilon=0.1, start=0.2, lr=0.3, ceiling=5.0)
    for _ in range(5):
        lagrangian.ascend(0, torch.zeros(2))
    assert lagrangian.values() == [0.0]
    for _ in range(40):
        lagrangian.ascend(0, torch.full((2,), 3.0))
    assert lagrangian.values() == [5.0]


def test_the_loss_weighs_the_kl_by_the_multiplier_and_adds_the_log_l0():
    lagrangian = Lagrangian(2, epsilon=0.1, start=3.0)
    kl, log_l0 = torch.tensor([0.3, 0.5]), torch.tensor([[-1.0, 0.0], [-2.0, -1.0]])
    assert lagrangian.loss(1, kl, log_l0).item() == pytest.approx(3.0 * (0.4 - 0.1) - 1.0)


def test_read_keeps_the_hidden_states_the_gates_read(tiny):
    net, x = tiny
    reading = read(net, x)
    assert torch.allclose(reading.logits, net(x), atol=1e-5)
    assert len(reading.states) == 3 + 2 and all(s.shape == (4, 16, 32) for s in reading.states)
    assert torch.allclose(reading.states[1], net.embed(x)[:, 1:])
    positions = net.pos_embed[:, 1:]
    assert torch.allclose(reading.states[1] - reading.states[0], positions.expand(4, -1, -1), atol=1e-6)


def test_masking_replaces_patch_embeddings_by_the_placeholder(tiny):
    net, x = tiny
    reading = read(net, x)
    placeholder = torch.randn(32)
    kept = masked_logits(net, reading, torch.ones(4, 16), placeholder)
    assert torch.allclose(kept, reading.logits, atol=1e-5)
    # every patch masked: the image no longer matters, only the positions and the placeholder remain
    gone = masked_logits(net, reading, torch.zeros(4, 16), placeholder)
    assert torch.allclose(gone, gone[:1].expand(4, -1), atol=1e-5)
    assert not torch.allclose(gone, reading.logits, atol=1e-3)
    assert torch.allclose(kl_to_original(reading.logits, kept), torch.zeros(4), atol=1e-6)
    assert (kl_to_original(reading.logits, gone) > 0).all()


def test_training_draw_moves_the_gates_and_placeholder_never_the_vit(tiny):
    net, x = tiny
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask = DiffMask(32, 3)
    reading = read(net, x)
    assert mask.log_alpha(reading).shape == (4, 16, 5) and mask.log_alpha(reading, 2).shape == (4, 16, 2)
    kl, log_l0 = mask.terms(net, reading, 4, torch.Generator().manual_seed(0))
    assert kl.shape == (4,) and log_l0.shape == (4, 16) and (log_l0 <= 0).all()
    Lagrangian(5).loss(4, kl, log_l0).backward()
    assert mask.placeholder.grad is not None and all(g.mlp[0].weight.grad is not None for g in mask.gates)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # the attribution is the product over every layer of the keep probabilities
    probabilities = mask.keep_probabilities(reading)
    assert torch.allclose(mask.attribution(reading), probabilities.prod(-1), atol=1e-6)


# --- the trained module through vitx.explain -----------------------------------------------------------

SEED = 20_000      # fresh: training draws data seeds >= 1,000,000, the card's test set is data seed 10,000


@pytest.fixture(scope="module")
def shapes_vit():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def data():
    return shapes(n=6, seed=SEED)


def test_diffmask_maps_are_keep_probabilities_with_per_layer_details(shapes_vit, data):
    x = shapes_vit.preprocess(data.images[:6])
    exp = vitx.explain(shapes_vit, x, method="diffmask", normalize=False)
    assert exp.token_maps.shape == (6, 8, 8) and exp.maps.shape == (6, 64, 64)
    layers = torch.tensor(exp.details["layer_gates"])
    assert layers.shape == (6, 8, 64) and layers.min() >= 0 and layers.max() <= 1
    keep = exp.token_maps.flatten(1)
    assert torch.allclose(layers.prod(1), keep, atol=1e-5)
    kept = exp.details["kept"]
    assert len(kept) == 6 and all(len(image) == 8 for image in kept)
    assert [image[-1] for image in kept] == [torch.nonzero(row > 0.5).flatten().tolist() for row in keep]
    assert all(set(later) <= set(earlier) for image in kept for earlier, later in zip(image, image[1:]))
    assert 0 < sum(len(image[-1]) for image in kept) < 6 * 64          # some patches dropped, some kept
    picture = exp.stages(0)                                              # the image, then once per layer
    assert picture.width > 9 * picture.height
    # it explains the predicted class whatever the target: the gates have none
    other = vitx.explain(shapes_vit, x, method="diffmask", target=(exp.targets + 1) % 8, normalize=False)
    assert torch.equal(other.token_maps, exp.token_maps)


def test_diffmask_refuses_what_it_was_not_trained_for(shapes_vit, data, tmp_path):
    x = shapes_vit.preprocess(data.images[:2])
    random = vitx.load_model(create_model("vitx_shapes"), name="shapes-vit", mean=shapes_vit.config.mean,
                             std=shapes_vit.config.std, class_names=shapes_vit.config.class_names)
    with pytest.raises(StaleModuleError, match="trained for other weights of 'shapes-vit'"):
        vitx.explain(random, x, method="diffmask")
    unnamed = vitx.load_model(create_model("vitx_shapes"))
    with pytest.raises(vitx.VitxError, match="needs a DiffMask module trained for this model"):
        vitx.explain(unnamed, x, method="diffmask")
    with pytest.raises(vitx.VitxError, match="neither a zoo name nor a file"):
        vitx.explain(shapes_vit, x, method="diffmask", module=str(tmp_path / "missing.safetensors"))
    with pytest.raises(vitx.VitxError, match="is not a DiffMask module of method 'diffmask'"):
        vitx.explain(shapes_vit, x, method="diffmask", module="shapes-vit")
    with pytest.raises(vitx.VitxError, match="Vision DiffMask's gates"):
        vitx.load_model("shapes-vit-diffmask")
    narrow = vitx.load_model(VisionTransformer(ViTConfig(image_size=64, patch_size=8, embed_dim=32, depth=2,
                                                         num_heads=2, num_classes=8)), name="shapes-vit",
                             mean=shapes_vit.config.mean, std=shapes_vit.config.std,
                             class_names=shapes_vit.config.class_names)
    with pytest.raises(vitx.VitxError, match="has gates for 6 blocks of width 96, and this model has 2 blocks of width 32"):
        vitx.explain(narrow, x, method="diffmask", allow_stale=True)


# The quality gate on 500 fresh images is in tests/test_pruning_quality.py, beside the other pruning methods'.


def test_recipe_trains_only_the_gates_and_writes_its_card(tmp_path, monkeypatch):
    from vitx.training import diffmask as diffmask_training
    from vitx.training import train
    monkeypatch.setattr(diffmask_training, "TEST_IMAGES", 20)
    (tmp_path / "shapes-vit.safetensors").write_bytes((ZOO_DIR / "shapes-vit.safetensors").read_bytes())
    metrics = train("shapes-vit-diffmask", tmp_path, seed=3, steps=3, batch_size=4, progress=False)
    assert set(metrics) == {"kept", "kl", "kl_p90", "within", "agreement", "multipliers"} and len(metrics["multipliers"]) == 8
    assert 0 < metrics["kept"] <= 1 and metrics["kl"] >= 0
    meta = read_metadata(tmp_path / "shapes-vit-diffmask.safetensors")
    assert meta["kind"] == "diffmask" and meta["explains"] == "shapes-vit"
    assert meta["fingerprints"] == [fingerprint(vitx.load_model("shapes-vit").net)]
    state, _ = read_checkpoint(tmp_path / "shapes-vit-diffmask.safetensors")
    assert all(key.startswith(("gates.", "placeholder")) for key in state)     # the classifier is not saved
    card = (tmp_path / "shapes-vit-diffmask.md").read_text()
    assert "KL(p ‖ p̃)" in card and "--seed 3 --steps 3 --batch-size 4" in card
