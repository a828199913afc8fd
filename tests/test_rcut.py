"""R-Cut (src/vitx/methods/inherent/rcut.py): the normalised cut on hand-built graphs, the batched channel scoring
against the per-channel loop of benchmarks/rcut.py, the batched method against one image at a time, class
specificity, and its refusals. The quality gates on shapes-vit are in tests/test_rcut_quality.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import vitx
from reference import snapshot
from vitx.data import shapes
from vitx.methods.inherent.rcut import channel_masks, channel_scores, normalized_cut

SEED = 20_000
_spec = importlib.util.spec_from_file_location("rcut_benchmark", Path(__file__).parents[1] / "benchmarks" / "rcut.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def two_clusters(sizes=(10, 6), noise=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 8) of two clusters around orthogonal directions (cosine ≈ 0 across, ≈ 1 within), shuffled, and
    which cluster each belongs to."""
    rng = np.random.default_rng(seed)
    member = rng.permutation(np.repeat([0, 1], sizes))
    centres = np.eye(8)[[0, 1]]
    return centres[member] + noise * rng.standard_normal((len(member), 8)), member


@pytest.mark.parametrize("seed", range(3))
def test_normalized_cut_separates_two_clusters(seed):
    """The cut puts each cluster on its own side; y solves (D − W) y = λ D y (checked against the symmetric form
    D^-½ (D − W) D^-½ z = λ z solved by numpy); the object is the smaller cluster, where the D-orthogonality to
    the constant vector puts the largest |y| (n₁ y₁ d₁ + n₂ y₂ d₂ = 0), and y is positive there."""
    features, member = two_clusters(seed=seed)
    y, side, value = normalized_cut(features, tau=0.2)
    assert (side == (member == 1)).all()                       # the smaller cluster (6 of 16) is the object
    assert (y[side] > 0).all() and (y[~side] < 0).all()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    weights = np.where(unit @ unit.T > 0.2, 1.0, 1e-5)
    degree = weights.sum(1)
    np.testing.assert_allclose((np.diag(degree) - weights) @ y, value * degree * y, atol=1e-9)
    values, vectors = np.linalg.eigh(np.eye(len(y)) - weights / np.sqrt(np.outer(degree, degree)))
    z = vectors[:, 1] / np.sqrt(degree)
    z *= np.sign(z @ (degree * y)) / np.sqrt(z @ (degree * z))
    np.testing.assert_allclose(y, z, atol=1e-8)
    assert value == pytest.approx(values[1], abs=1e-10)


def test_object_side_follows_the_smaller_cluster():
    """Swapping which cluster is the smaller one moves the object with it: the side rule reads the largest |y_i|,
    not which cluster comes first."""
    features, member = two_clusters(sizes=(11, 5), seed=4)
    y, side, _ = normalized_cut(features, tau=0.2)
    assert (side == (member == 1)).all() and y[np.abs(y).argmax()] > 0
    features, member = two_clusters(sizes=(5, 11), seed=4)
    y, side, _ = normalized_cut(features, tau=0.2)
    assert (side == (member == 0)).all() and y[np.abs(y).argmax()] > 0


def test_relevance_side_rule_keeps_the_more_relevant_cluster():
    """With ``relevance`` the object is the side of the higher mean relevance, here the larger cluster, which the
    authors' rule leaves as background; the eigenvector and λ are the same, y only signed the other way."""
    features, member = two_clusters(sizes=(11, 5), seed=4)
    y, side, value = normalized_cut(features, tau=0.2)
    relevance = np.where(member == 0, 2.0, 1.0)
    y_relevant, side_relevant, value_relevant = normalized_cut(features, tau=0.2, relevance=relevance)
    assert (side_relevant == (member == 0)).all() and (side_relevant == ~side).all()
    np.testing.assert_allclose(y_relevant, -y)
    assert value_relevant == value


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def x(model):
    return model.normalize(shapes(n=3, seed=SEED).images)


@pytest.mark.parametrize("score, internal_batch_size", [("probability", 64), ("logit", 50)])
def test_batched_channel_scores_equal_the_per_channel_loop(model, x, score, internal_batch_size):
    """Every channel of 3 images in forwards of ``internal_batch_size`` (50 does not divide 3 × 96) against one
    forward per channel."""
    batch, features = benchmark.prepared(model, x)
    assert features.shape == (3, 96, 8, 8)
    with torch.no_grad():
        batched = channel_scores(batch, features, score, internal_batch_size)
    looped = benchmark.channel_scores_loop(model, x, batch.targets, features, score)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    assert batched.std(1).min() > 0                               # the masks change the score


def test_masks_are_the_authors_upsampled_min_max_maps():
    """Scaling the grid before bilinear upsampling with aligned corners equals the authors' scaling after it."""
    grid = torch.randn(5, 8, 8, generator=torch.Generator().manual_seed(0))
    up = torch.nn.functional.interpolate(grid[:, None], size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    low, high = up.flatten(1).amin(1)[:, None, None], up.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(channel_masks(grid, (64, 64)), (up - low) / (high - low))
    assert channel_masks(torch.ones(1, 8, 8), (64, 64)).abs().max() == 0


def test_batched_method_equals_one_image_at_a_time(model, x):
    together = vitx.explain(model, x, method="r-cut")
    for i in range(len(x)):
        alone = vitx.explain(model, x[i:i + 1], method="r-cut")
        torch.testing.assert_close(alone.token_maps[0], together.token_maps[i], atol=1e-4, rtol=1e-4)
        assert (alone.details["object"][0] == together.details["object"][i]).all()
    assert together.token_maps.shape == (3, 8, 8) and len(together.details["eigenvalue"]) == 3


def test_map_is_the_object_side_of_the_cut(model, x):
    """The object side holds the tokens where y exceeds its mean, so every one of them weighs at least as much in
    the map max(y, 0) as any token off it, and the map's peak lies on it."""
    exp = vitx.explain(model, x, method="r-cut")
    for tokens, side in zip(exp.token_maps, exp.details["object"]):
        assert side.any() and (~side).any()
        assert tokens[side].min() >= tokens[~side].max() and tokens[side].max() == 1


def test_a_different_target_gives_a_different_map(model, x):
    """Class-specific: the weights come from the target's scores, so another target weighs the channels otherwise
    and the graph, the cut and the map change: on images 1 and 2 (by 0.86 and 0.22 at most). On image 0 the graph,
    whose edges are cosines above τ, comes out the same under both weightings, and so does the map."""
    predicted = vitx.explain(model, x, method="r-cut")
    other = vitx.explain(model, x, method="r-cut", target=(predicted.targets + 1) % 8)
    change = (predicted.token_maps - other.token_maps).flatten(1).abs().amax(1)
    assert (change[1:] > 0.1).all() and change[0] == 0


@pytest.mark.parametrize("params, message", [
    ({"block": 6}, r"r-cut reads the norm1 output of block 6; this model has 6 blocks \(0..5 or -6..-1\)"),
    ({"tau": 1.0}, r"parameter 'tau' must be in \[-1, 1\)"),
    ({"score": "odds"}, r"score must be 'logit' or 'probability', got 'odds'"),
    ({"side": "left"}, r"side must be 'largest' or 'relevance', got 'left'"),
    ({"internal_batch_size": 0}, r"parameter 'internal_batch_size' must be in \[1, inf\)"),
])
def test_bad_parameters_are_refused_before_any_forward(model, x, params, message):
    before, forwards = snapshot(model.net), []
    handle = model.net.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with pytest.raises(vitx.VitxError, match=message):
            vitx.explain(model, x, method="r-cut", **params)
    finally:
        handle.remove()
    assert not forwards and snapshot(model.net) == before
