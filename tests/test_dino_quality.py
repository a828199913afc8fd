"""DINO's attention maps on the zoo's self-supervised ``shapes-vit-dino`` (issue 18): the pointing game and energy of
``dino-attention`` on fresh images, and the paper's Jaccard comparison of the best head's 60% mask with the supervised
``shapes-vit``'s and a randomly initialised ViT's (Caron et al., ICCV 2021, Table 5). Gates at a smaller N than
docs/inherent.md's N = 500 figures; each states the figure measured."""
import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.evaluate import evaluate
from vitx.evaluate_heads import head_jaccard
from vitx.model import wrap
from vitx.models import create_model
from vitx.training.recipes import MEAN, STD

SEED = 20_000
N = 200


@pytest.fixture(scope="module")
def dino_model():
    return vitx.load_model("shapes-vit-dino")


@pytest.fixture(scope="module")
def supervised():
    return vitx.load_model("shapes-vit")


def scores(model):
    data = shapes(n=N, seed=SEED)
    return evaluate(model, data, ["dino-attention", "random"], metrics=["pointing_game_tolerant",
                    "energy_pointing_game"], batch_size=100, sanity_images=None).results["methods"]


@pytest.fixture(scope="module")
def scored(dino_model, supervised):
    return {"dino": scores(dino_model), "supervised": scores(supervised)}


BACKGROUND = ("shapes-vit-dino's 1,500 steps left its features near chance (k-NN 0.127, linear probe 0.171) and "
              "its class token attending away from the object: at N = 200 pointing 0.017, energy 0.037 against "
              "noise's 0.094 (-17.2 standard errors); docs/inherent.md")


@pytest.mark.parametrize("model", [pytest.param("dino", marks=pytest.mark.xfail(strict=True, reason=BACKGROUND)),
                                   "supervised"])
def test_dino_attention_points_at_the_object(scored, model):
    """Tolerant pointing game at least 0.8 (the mean over heads, the default; measured at N = 200: shapes-vit 0.989,
    shapes-vit-dino 0.017, an expected failure)."""
    rate = scored[model]["dino-attention"]["pointing_game_tolerant"]
    assert rate >= 0.8, f"tolerant pointing game {rate:.3f}"


@pytest.mark.parametrize("model", [pytest.param("dino", marks=pytest.mark.xfail(strict=True, reason=BACKGROUND)),
                                   "supervised"])
def test_dino_attention_puts_more_energy_in_the_mask_than_noise(scored, model):
    """Energy inside the mask above a noise map's by more than 3 standard errors of the difference (measured at
    N = 200: shapes-vit 0.437 against 0.094, 37.7 standard errors; shapes-vit-dino 0.037, -17.2: expected to fail)."""
    ours, noise = scored[model]["dino-attention"], scored[model]["random"]
    sem = (ours["energy_pointing_game_sem"] ** 2 + noise["energy_pointing_game_sem"] ** 2) ** 0.5
    margin = (ours["energy_pointing_game"] - noise["energy_pointing_game"]) / sem
    assert margin > 3, f"{margin:.1f} standard errors ({ours['energy_pointing_game']:.3f} against " \
                       f"{noise['energy_pointing_game']:.3f})"


@pytest.fixture(scope="module")
def jaccards(dino_model, supervised):
    data = shapes(n=N, seed=SEED)
    torch.manual_seed(0)
    random_vit = wrap(create_model("vitx_shapes"), mean=MEAN, std=STD)
    return {name: head_jaccard(model, data) for name, model in
            (("dino", dino_model), ("supervised", supervised), ("random", random_vit))}


@pytest.mark.xfail(strict=True, reason="the best heads' Jaccard at N = 200: shapes-vit-dino 0.034, shapes-vit 0.242, "
                                      "a random ViT 0.096: on shapes the DINO teacher attends to the background")
def test_best_dino_head_segments_better_than_the_supervised_and_random_vits(jaccards):
    """The paper's claim on shapes: the best DINO head's 60% mask has a higher Jaccard index against the object
    patches than the best head of shapes-vit and of a random ViT. Not so here (N = 200: 0.034, 0.242, 0.096; at
    N = 500: 0.034, 0.240, 0.100), and less so the longer DINO trains (docs/inherent.md)."""
    best = {name: scores["best"] for name, scores in jaccards.items()}
    assert best["dino"] > best["supervised"] and best["dino"] > best["random"], best
