"""DINO's attention maps on the zoo's self-supervised ``shapes-vit-dino`` (issue 18): the pointing game and energy of
``dino-attention`` on fresh images, and the paper's Jaccard comparison of the best head's 60% mask with the supervised
``shapes-vit``'s and a randomly initialised ViT's (Caron et al., ICCV 2021, Table 5). Gates at a smaller N than
docs/inherent_dino.md's N = 500 figures; each states the figure measured."""
import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.evaluate import evaluate
from vitx.methods.inherent.dino import head_jaccard
from vitx.model import wrap
from vitx.models import create_model
from vitx.training.recipes import MEAN, STD

SEED = 20_000
N = 200


@pytest.fixture(scope="module")
def dino_model():
    return vitx.load_model("shapes-vit-dino")


@pytest.fixture(scope="module")
def scored(dino_model):
    data = shapes(n=N, seed=SEED)
    return evaluate(dino_model, data, ["dino-attention", "random"], metrics=["pointing_game_tolerant",
                    "energy_pointing_game"], batch_size=100, sanity_images=None).results["methods"]


def test_dino_attention_points_at_the_object(scored):
    """Tolerant pointing game at least GATE_POINTING (measured MEASURED_POINTING at N = 200)."""
    rate = scored["dino-attention"]["pointing_game_tolerant"]
    assert rate >= GATE_POINTING, f"tolerant pointing game {rate:.3f}"


def test_dino_attention_puts_more_energy_in_the_mask_than_noise(scored):
    """Energy inside the mask above a noise map's by more than 3 standard errors of the difference (measured
    MEASURED_ENERGY)."""
    ours, noise = scored["dino-attention"], scored["random"]
    sem = (ours["energy_pointing_game_sem"] ** 2 + noise["energy_pointing_game_sem"] ** 2) ** 0.5
    margin = (ours["energy_pointing_game"] - noise["energy_pointing_game"]) / sem
    assert margin > 3, f"{margin:.1f} standard errors ({ours['energy_pointing_game']:.3f} against " \
                       f"{noise['energy_pointing_game']:.3f})"


@pytest.fixture(scope="module")
def jaccards(dino_model):
    data = shapes(n=N, seed=SEED)
    torch.manual_seed(0)
    random_vit = wrap(create_model("vitx_shapes"), mean=MEAN, std=STD)
    return {name: head_jaccard(model, data) for name, model in
            (("dino", dino_model), ("supervised", vitx.load_model("shapes-vit")), ("random", random_vit))}


def test_best_dino_head_segments_better_than_the_supervised_and_random_vits(jaccards):
    """The paper's claim on shapes: the best DINO head's 60% mask has a higher Jaccard index against the object
    patches than the best head of shapes-vit and of a random ViT (measured at N = 200: MEASURED_JACCARD)."""
    best = {name: scores["best"] for name, scores in jaccards.items()}
    assert best["dino"] > best["supervised"] and best["dino"] > best["random"], best
