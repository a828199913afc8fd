"""ViT Shapley: the efficient normalisation and the Shapley loss by hand, the loss's minimiser against exact
Shapley values, the surrogate's masking and its coalition distribution, the method's efficiency and refusals,
and both training recipes end to end on a tiny budget (the shipped explainer's quality is in test_quality.py)."""
from pathlib import Path

import pytest
import torch

import vitx
from reference import close as close_tensors, images, jitter, tiny_explainer
from vitx.batch import Batch
from vitx.checkpoint import read_metadata
from vitx.methods.perturbation import coalition_values
from vitx.methods.vitshapley import amortised_values, load_explainer
from vitx.models import ViTConfig, VisionTransformer
from vitx.shapley import all_coalitions, efficient_normalization, exact_shapley, sample_coalitions
from vitx.surrogate import coalition_probabilities, masked_logits, shapley_loss, uniform_size_coalitions


def close(actual, expected, rtol=1e-4):
    close_tensors(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3))
    return vitx.load_model(jitter(net))


@pytest.fixture(scope="module")
def x():
    return images(3, 3, 32, 32)


def test_efficient_normalization_by_hand():
    phi = torch.tensor([[[1.0], [2.0], [3.0], [-2.0]]])            # Σ = 4; v(N) − v(∅) = 0.5 − 0.1 = 0.4
    out = efficient_normalization(phi, torch.tensor([[0.5]]), torch.tensor([[0.1]]))
    close(out, [[[0.1], [1.1], [2.1], [-2.9]]], rtol=1e-6)          # each moved by (0.4 − 4) / 4 = −0.9
    random = efficient_normalization(torch.randn(5, 16, 3), torch.rand(5, 3), torch.rand(5, 3))
    assert random.shape == (5, 16, 3)


def test_shapley_loss_by_hand():
    phi = torch.tensor([[[0.2, 0.0], [0.3, 1.0]]])                   # 1 image, 2 players, 2 classes
    keep = torch.tensor([[[True, False]], [[False, True]]])          # {0} and {1}
    values = torch.tensor([[[0.5, 0.1]], [[0.6, 0.9]]])
    v_none = torch.tensor([[0.1, 0.1]])
    # residuals: {0}: (0.5−0.1−0.2, 0.1−0.1−0) = (0.2, 0); {1}: (0.6−0.1−0.3, 0.9−0.1−1) = (0.2, −0.2)
    close(shapley_loss(phi, keep, values, v_none), (0.04 + 0 + 0.04 + 0.04) / 4, rtol=1e-6)


def test_minimising_the_shapley_loss_gives_the_shapley_values():
    """Covert et al.'s theorem: over coalitions drawn from the Shapley kernel, the efficient φ with the least
    loss is the Shapley value. A random 4-player game on two images; the minimiser closes in on the exact
    values as the paired draws grow from 2,000 to 200,000."""
    P = 4
    game = torch.rand(2 ** P, 2, generator=torch.Generator().manual_seed(3)).double()   # v(S) per image
    code = 2 ** torch.arange(P)
    position = torch.empty(2 ** P, dtype=torch.long)
    position[(all_coalitions(P).long() * code).sum(1)] = torch.arange(2 ** P)
    v_all, v_none = game[-1][:, None], game[0][:, None]
    exact = exact_shapley(game)

    def minimiser(samples: int) -> torch.Tensor:
        keep = sample_coalitions(P, samples, torch.Generator().manual_seed(0))
        values = game[position[(keep.long() * code).sum(1)]][..., None]                  # (K, 2, 1)
        raw = torch.zeros(2, P, 1, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")

        def loss():
            optimiser.zero_grad()
            value = shapley_loss(efficient_normalization(raw, v_all, v_none), keep[:, None].expand(-1, 2, -1),
                                 values, v_none)
            value.backward()
            return value
        optimiser.step(loss)
        return efficient_normalization(raw, v_all, v_none)[..., 0].detach()
    few, many = ((minimiser(n) - exact).abs().max() for n in (2_000, 200_000))
    assert many < 0.02 * exact.abs().max() and many < few, (few, many)


def test_surrogate_coalition_sizes_are_uniform():
    P, n = 16, 34_000
    keep = uniform_size_coalitions(n, P, torch.Generator().manual_seed(0))
    frequency = torch.bincount(keep.sum(1), minlength=P + 1).double() / n
    close(frequency, torch.full((P + 1,), 1 / (P + 1), dtype=torch.float64), rtol=0.08)
    close(keep.double().mean(0), torch.full((P,), 0.5, dtype=torch.float64), rtol=0.03)   # no player favoured


def test_masked_logits_are_the_attention_removal_values(model, x):
    keep = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    with torch.no_grad():
        expected = torch.stack([masked_logits(model, x, k).softmax(-1) for k in keep])
        probabilities = coalition_probabilities(model, x, keep, images_per_pass=4)
    close(probabilities, expected, rtol=1e-5)
    batch = Batch(model, x, model.layout(x), torch.tensor([0, 1, 2]))
    with torch.no_grad():
        by_method = coalition_values(batch, keep, removal="attention", score="probability")
    close(by_method, expected.gather(2, torch.tensor([0, 1, 2]).expand(2, 3)[..., None])[..., 0], rtol=1e-5)


# --- the method ------------------------------------------------------------------------------------

def test_values_are_efficient_and_normalised_by_hand(model, x):
    path = tiny_explainer(model)
    explainer, surrogate = load_explainer(Path(path), "cpu")
    exp = vitx.explain(model, x, "vit-shapley", target=[0, 2, 1], normalize=False, explainer=path)
    with torch.no_grad():
        v_all = surrogate(x).softmax(-1)
        v_none = masked_logits(surrogate, x, torch.zeros(3, 16, dtype=torch.bool)).softmax(-1)
        raw = explainer(x)
    t = torch.tensor([0, 2, 1])
    delta = (v_all - v_none)[torch.arange(3), t]
    own = raw[torch.arange(3), :, t]
    # efficiency, to float32 rounding of the 16 terms summed (each as large as the raw values it corrects)
    torch.testing.assert_close(exp.token_maps.flatten(1).sum(1), delta, rtol=0,
                               atol=1e-5 * float(own.abs().sum(1).max() + delta.abs().max()))
    close(exp.token_maps.flatten(1), own + (delta - own.sum(1))[:, None] / 16, rtol=1e-5)
    close(amortised_values(explainer, surrogate, x).sum(1), v_all - v_none, rtol=1e-5)   # every class


def test_refusals_name_the_problem(model, x, tmp_path):
    with pytest.raises(vitx.VitxError, match="needs an explainer trained for this model"):
        vitx.explain(model, x, "vit-shapley")                             # no zoo explainer for it
    with pytest.raises(vitx.VitxError, match="neither a zoo name nor a file"):
        vitx.explain(model, x, "vit-shapley", explainer=str(tmp_path / "missing.safetensors"))
    surrogate = str(tiny_explainer(model)).replace("explainer.safetensors", "surrogate.safetensors")
    with pytest.raises(vitx.VitxError, match="is not an explainer of method 'vit-shapley'"):
        vitx.explain(model, x, "vit-shapley", explainer=surrogate)
    explainer = tiny_explainer(model)
    with pytest.raises(vitx.VitxError, match="is a ViT Shapley explainer"):
        vitx.load_model(explainer)
    other = vitx.load_model(model.net, class_names=("a", "b", "c"), mean=(0.5, 0.5, 0.5))
    with pytest.raises(vitx.VitxError, match="normalisation or classes differ"):
        vitx.explain(other, x, "vit-shapley", explainer=explainer)


# --- training --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from vitx.training import shapley as shapley_training
    from vitx.training import train
    out = tmp_path_factory.mktemp("zoo")
    patch = pytest.MonkeyPatch()
    patch.setattr(shapley_training, "RANK_IMAGES", 3)
    patch.setattr(shapley_training, "KERNEL_SHAP_SAMPLES", 64)
    try:
        train("shapes-vit", out, seed=4, steps=2, batch_size=4, progress=False)
        surrogate = train("shapes-vit-surrogate", out, seed=5, steps=2, batch_size=4, progress=False)
        explainer = train("shapes-vit-shapley", out, seed=6, steps=2, batch_size=2, progress=False)
    finally:
        patch.undo()
    return out, surrogate, explainer


def test_surrogate_recipe_starts_from_the_classifier_and_scores_masked_accuracy(trained):
    out, metrics, _ = trained
    original = dict(vitx.load_model(str(out / "shapes-vit.safetensors")).net.named_parameters())
    surrogate = dict(vitx.load_model(str(out / "shapes-vit-surrogate.safetensors")).net.named_parameters())
    assert all(torch.allclose(surrogate[k], original[k], atol=1e-2) for k in original)   # head included
    meta = read_metadata(out / "shapes-vit-surrogate.safetensors")
    assert meta["kind"] == "surrogate" and meta["surrogate_of"] == "shapes-vit"
    assert set(metrics) == {"accuracy", "kept_0.25", "kept_0.5", "kept_0.75"}
    card = (out / "shapes-vit-surrogate.md").read_text()
    for fact in ("vitx train shapes-vit-surrogate --seed 5 --steps 2 --batch-size 4", "KL(f(x) ‖ g(x_S))",
                 f"{metrics['kept_0.5']['agreement']:.3f}"):
        assert fact in card


def test_explainer_recipe_ships_an_efficient_explainer_with_its_card(trained):
    out, _, metrics = trained
    path = out / "shapes-vit-shapley.safetensors"
    meta = read_metadata(path)
    assert (meta["kind"], meta["explains"], meta["surrogate"]) == ("shapley-explainer", "shapes-vit",
                                                                   "shapes-vit-surrogate")
    assert metrics["images"] == 3 and metrics["kernel_shap_samples"] == 64
    assert -1 <= metrics["rank_correlation"] <= 1 and metrics["efficiency_error"] < 1e-5
    explainer, _ = load_explainer(path, "cpu")
    surrogate = dict(vitx.load_model(str(out / "shapes-vit-surrogate.safetensors")).net.named_parameters())
    backbone = dict(explainer.backbone.named_parameters())
    assert all(torch.allclose(backbone[k], surrogate[k], atol=1e-2) for k in backbone)
    model = vitx.load_model(str(out / "shapes-vit.safetensors"))
    data = vitx.data.shapes(n=2, seed=30_000)
    exp = vitx.explain(model, model.preprocess(data.images), "vit-shapley", explainer=str(path), normalize=False)
    assert exp.token_maps.shape == (2, 8, 8)
    card = (out / "shapes-vit-shapley.md").read_text()
    for fact in ("vitx train shapes-vit-shapley --seed 6 --steps 2 --batch-size 2", "Shapley kernel",
                 f"{metrics['rank_correlation']:.3f}", "further transformer block"):
        assert fact in card
