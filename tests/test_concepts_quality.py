"""Issue 18's gates on the zoo's Concept Transformer (shapes-vit-concepts) and its method, on fresh images with fixed
seeds (training draws data seeds >= 1,000,000; the model card reports data seed 10,000)."""
from __future__ import annotations

import pytest
import torch

import vitx
from vitx.data.concepts import shapes_concepts
from vitx.evaluate import evaluate
from vitx.training.concepts import concept_scores

SEED = 20_000


@pytest.fixture(scope="module")
def data():
    return shapes_concepts(1000, seed=SEED)


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit-concepts")


def test_accuracy_within_one_point_of_shapes_vit(model, data):
    """Measured: 0.996 against shapes-vit's 0.998 on these 1,000 images."""
    reference = vitx.load_model("shapes-vit")
    x = model.normalize(data.images)
    with torch.no_grad():
        ours, theirs = ((m(x).argmax(-1) == data.labels).float().mean().item() for m in (model, reference))
    assert ours >= theirs - 0.01, f"accuracy {ours:.3f} against shapes-vit's {theirs:.3f}"


@pytest.fixture(scope="module")
def scores(model, data):
    with torch.no_grad():
        return concept_scores(model.net, model.normalize(data.images), data)


# The colour concepts stay at chance: 0.357 on the card's images (0.305 in a first run at one learning rate), though a
# linear probe on shapes-vit's class token reads the colour group at 0.86; the attention puts ~0.03 on each colour
# where the label asks 0.25 (docs/inherent.md).
COLOUR = "0.36: the colour concepts stay at chance in 400 steps; the class token carries colour (probe 0.86)"


@pytest.mark.parametrize("group", ["corners", "number of corners", "outline", "concavity",
                                   pytest.param("colour", marks=pytest.mark.xfail(strict=True, reason=COLOUR))])
def test_global_concept_attention_agrees_with_the_labels(scores, group):
    """Top-1 within the group at least 0.9 (measured on these images: corners 0.999, number of corners 0.996, outline
    0.997, concavity 0.996; colour 0.363)."""
    assert scores["global_top1"][group] >= 0.9, scores["global_top1"]


def test_spatial_concept_attention_agrees_with_the_labels(scores):
    """Top-1 per patch at least 0.9 (measured: 0.940; 80% of the patches are background, and the recall of straight
    edges is 0.59, of corners 0.65)."""
    assert scores["spatial_top1"] >= 0.9, scores


@pytest.fixture(scope="module")
def scored(model, data):
    subset = vitx.data.shapes(200, seed=SEED)
    return evaluate(model, subset, ["concept-transformer", "random"], metrics=["pointing_game_tolerant",
                    "energy_pointing_game"], batch_size=100, sanity_images=None).results["methods"]


# The map is exact, and it shows that the model counts background: the spatial value map gives the background concept
# a positive vote for triangle, star, heart and L-shape (+0.9 to +2.0 per unit of attention: a smaller object leaves
# more background patches), so on 100 of the 200 images the largest share of the logit is on a background patch.
POINTING = "0.50 (random 0.22): the model votes for four classes through the background concept's attention"


@pytest.mark.xfail(strict=True, reason=POINTING)
def test_concept_map_points_at_the_object(scored):
    """Tolerant pointing game at least 0.8 (measured: 0.50; random: 0.22)."""
    assert scored["concept-transformer"]["pointing_game_tolerant"] >= 0.8


def test_concept_map_puts_its_energy_on_the_object(scored):
    """Energy-based pointing game at least twice the random map's (measured: 0.335; random: 0.094)."""
    ours, noise = (scored[m]["energy_pointing_game"] for m in ("concept-transformer", "random"))
    assert ours >= 2 * noise, (ours, noise)
