"""Issues 16's and 17's gates on the zoo's pruned twins and pruning maps of shapes-vit, on fresh images with fixed seeds
(training draws data seeds >= 1,000,000; the model cards report data seed 10,000)."""
from __future__ import annotations

import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.evaluate import evaluate
from vitx.flops import count_flops
from vitx.methods.pruning.twins import load_pruned
from vitx.zoo import ZOO_DIR

SEED = 20_000
TWINS = {"shapes-vit-dynamicvit": 0.7, "shapes-vit-evit": 0.7}   # each twin's stated keep ratio ρ
MAPS = ["dynamicvit", "evit", "evit-finetuned", "ia-red2", "diffmask", "patch-slimming"]   # ia-red2: group 0


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


@pytest.mark.parametrize("name", TWINS)
def test_pruned_twin_keeps_accuracy_with_fewer_flops(model, name):
    """Within 1 point of shapes-vit's accuracy on the same 1,000 fresh images, with at least 30% fewer FLOPs."""
    twin = load_pruned(ZOO_DIR / f"{name}.safetensors", "cpu")
    assert twin.ratio == TWINS[name]
    data = shapes(n=1000, seed=SEED)
    x = model.normalize(data.images)
    with torch.no_grad():
        ours = torch.cat([twin(x[i:i + 250])[0].argmax(-1) for i in range(0, 1000, 250)])
        theirs = torch.cat([model(x[i:i + 250]).argmax(-1) for i in range(0, 1000, 250)])
    accuracy, original = ((p == data.labels).float().mean().item() for p in (ours, theirs))
    assert accuracy >= original - 0.01, f"{name}: accuracy {accuracy:.3f} against shapes-vit's {original:.3f}"
    saved = 1 - count_flops(twin, x[:1]) / count_flops(model.net, x[:1])
    assert saved >= 0.30, f"{name}: {saved:.1%} fewer FLOPs"


@pytest.fixture(scope="module")
def scored(model):
    """Each pruning map and a noise map on 500 fresh images; ia-red2 also with its survival map (``group=None``)."""
    data = shapes(n=500, seed=SEED)
    common = dict(metrics=["pointing_game_tolerant", "energy_pointing_game"], batch_size=100, sanity_images=None)
    rows = evaluate(model, data, [*MAPS, "random"], **common).results["methods"]
    survival = evaluate(model, data, ["ia-red2"], params={"ia-red2": {"group": None}}, **common).results["methods"]
    return {**rows, "ia-red2 survival": survival["ia-red2"]}


# IA-RED²'s survival map breaks the ties among the patches kept to the end by the last interpreter's probability, and
# on its twin the last two interpreters keep every patch the first kept (34% of them: the object and some
# background), so their probabilities carry no ranking: its peak falls on kept background.
SURVIVAL_PEAK = "0.261: the later interpreters keep every survivor, so the last one's tie-break is not the object's"


@pytest.mark.parametrize("method", [*MAPS, pytest.param("ia-red2 survival", marks=pytest.mark.xfail(
    strict=True, reason=SURVIVAL_PEAK))])
def test_keep_maps_point_at_the_object(scored, method):
    """Zhang et al.'s tolerant pointing game at least 0.8."""
    rate = scored[method]["pointing_game_tolerant"]
    assert rate >= 0.8, f"{method}: tolerant pointing game {rate:.3f}"


@pytest.mark.parametrize("method", [*MAPS, "ia-red2 survival"])
def test_keep_maps_put_more_energy_in_the_mask_than_noise(scored, method):
    """Energy inside the mask above a noise map's by more than 3 standard errors of the difference."""
    ours, noise = scored[method], scored["random"]
    sem = (ours["energy_pointing_game_sem"] ** 2 + noise["energy_pointing_game_sem"] ** 2) ** 0.5
    margin = (ours["energy_pointing_game"] - noise["energy_pointing_game"]) / sem
    assert margin > 3, f"{method}: {margin:.1f} standard errors ({ours['energy_pointing_game']:.3f} against " \
                       f"{noise['energy_pointing_game']:.3f})"
