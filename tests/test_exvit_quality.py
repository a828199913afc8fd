"""Issue 18's gates on eX-ViT's class maps (method 'ex-vit' on the zoo's shapes-vit-exvit), on 200 fresh images with
fixed seeds (training draws data seeds >= 1,000,000), and the weakly supervised segmentation score beside an existing
method on shapes-vit on the same images. evaluate() explains each image's true class (the WSSS protocol: maps from
image-level labels). Figures measured on these images are in the comments and in docs/inherent.md."""
from __future__ import annotations

import pytest

import vitx
from vitx.data import shapes
from vitx.evaluate import evaluate

SEED, N = 20_000, 200
METRICS = ["pointing_game_tolerant", "energy_pointing_game", "miou"]


@pytest.fixture(scope="module")
def scored():
    data = shapes(n=N, seed=SEED)
    common = dict(metrics=METRICS, batch_size=100, sanity_images=None)
    ours = evaluate(vitx.load_model("shapes-vit-exvit"), data, ["ex-vit", "random"], **common).results["methods"]
    theirs = evaluate(vitx.load_model("shapes-vit"), data, ["generic-attention", "gradcam"], **common)
    return {**ours, **{f"shapes-vit {k}": v for k, v in theirs.results["methods"].items()}}


def test_class_maps_point_at_the_object(scored):
    """Tolerant pointing game at least 0.9 (measured: 0.975; a noise map 0.220)."""
    assert scored["ex-vit"]["pointing_game_tolerant"] >= 0.9, scored["ex-vit"]


def test_class_maps_put_more_energy_in_the_mask_than_noise(scored):
    """Energy inside the mask above a noise map's by more than 3 standard errors (measured: 0.295 against 0.094, about
    40 standard errors; shapes-vit's generic-attention 0.449)."""
    ours, noise = scored["ex-vit"], scored["random"]
    sem = (ours["energy_pointing_game_sem"] ** 2 + noise["energy_pointing_game_sem"] ** 2) ** 0.5
    assert (ours["energy_pointing_game"] - noise["energy_pointing_game"]) / sem > 3, (ours, noise)


def test_class_maps_segment_the_object(scored):
    """Mean mIoU (object and background; object where the min-max-scaled map exceeds its mean) at least 0.45
    (measured: 0.520; a noise map 0.280), and above shapes-vit's Grad-CAM on the same images (0.360)."""
    ours = scored["ex-vit"]["miou"]
    assert ours >= 0.45 and ours > scored["random"]["miou"], scored["ex-vit"]
    assert ours > scored["shapes-vit gradcam"]["miou"] + 0.05, (ours, scored["shapes-vit gradcam"])


# The paper's claim, checked on shapes: eX-ViT's class maps segment better than post-hoc maps. Not here: Chefer's
# generic attention on shapes-vit reaches 0.658. The class map averages AttE's two attributes, and one of them sits on
# the background (5% of its mass on the object, yet it names the class alone, since after six blocks of attention
# every token carries the class); the object's attribute alone scores 0.675 (docs/inherent.md).
CLAIM = "mIoU 0.520 against generic-attention's 0.658 on shapes-vit: one of AttE's two attributes sits on the background"


@pytest.mark.xfail(strict=True, reason=CLAIM)
def test_class_maps_segment_better_than_generic_attention_on_shapes_vit(scored):
    assert scored["ex-vit"]["miou"] >= scored["shapes-vit generic-attention"]["miou"]
