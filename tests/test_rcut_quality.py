"""Issue 18's gates for R-Cut on the zoo's shapes-vit (200 fresh single-object images) and shapes-vit-multi (50
fresh images of 2 or 3 objects), data seed 20,000 (training draws seeds >= 1,000,000). Slow: R-Cut runs 97
forwards per image. The figures at N=500 are in docs/inherent.md."""
from __future__ import annotations

import pytest

import vitx
from vitx.data import shapes
from vitx.evaluate import evaluate

SEED = 20_000


@pytest.fixture(scope="module")
def single():
    model = vitx.load_model("shapes-vit")
    return evaluate(model, shapes(n=200, seed=SEED), ["r-cut", "random"], batch_size=100, sanity_images=None,
                    metrics=["pointing_game_tolerant", "energy_pointing_game"]).results["methods"]


def test_rcut_points_at_the_object(single):
    """Tolerant pointing game at least 0.9 (measured 0.987 ± 0.007; random 0.22)."""
    assert single["r-cut"]["pointing_game_tolerant"] >= 0.9


def test_rcut_puts_its_energy_on_the_object(single):
    """Energy-based pointing game at least 0.4, over four times random's (measured 0.542 ± 0.009; random 0.094)."""
    assert single["r-cut"]["energy_pointing_game"] >= 0.4
    assert single["r-cut"]["energy_pointing_game"] >= 4 * single["random"]["energy_pointing_game"]


# The cut's object side is the side of the largest |y_i| (the authors' TokenCut rule): the most distinct cluster of
# patches, whichever object the target names. The target reaches the graph only through the channel weights
# softmax(s), and with s a probability in [0, 1] they differ by at most a factor e, too little to move the cut
# from one object to another (docs/inherent.md).
ONE_OBJECT = ("class sensitivity 0.402 ± 0.040 (random 0.5) on the 128 targets of 50 images: the cut picks the most "
              "distinct object whatever the target, the target only reweighing channels by at most a factor e")


def class_sensitivity(side: str) -> float:
    model = vitx.load_model("shapes-vit-multi")
    return evaluate(model, shapes(n=50, seed=SEED, variant="multi"), ["r-cut"], params={"r-cut": {"side": side}},
                    batch_size=50, sanity_images=None, metrics=["class_sensitivity"]).results["methods"]["r-cut"][
        "class_sensitivity"]


@pytest.mark.xfail(strict=True, reason=ONE_OBJECT)
def test_rcut_prefers_the_target_object_on_multi_object_images():
    """Class sensitivity above random's 0.5: the target's object gets more relevance per pixel than the others."""
    assert class_sensitivity("largest") > 0.5


def test_relevance_side_prefers_the_target_object():
    """With side="relevance" (ours) class sensitivity at least 0.65 (measured 0.742 ± 0.034 on the 128 targets of
    the 50 images). The price, measured on the 200 single-object images: tolerant pointing 0.629 and energy 0.358
    instead of 0.987 and 0.542 (docs/inherent.md), so the default stays the authors' rule."""
    assert class_sensitivity("relevance") >= 0.65
