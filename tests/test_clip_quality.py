"""Issue 15's quality gates on the zoo's image-text model ``shapes-clip``: zero-shot classification of fresh
single-object images of the captions' world (``shapes_captions(single=True)``) by the prompts "a photo of a {shape}"
(at least 95%; the model card also reports the transfer to the classifiers' ``shapes`` images, 0.728), and on 500 fresh two-object images
generic-attention's map for the prompt naming object A points at A (Zhang et al.'s tolerant game) and puts more
relevance on A than on the other object, each in at least 90% of the pairs (both objects' prompts are explained: 1,000
pairs)."""
from __future__ import annotations

import pytest

import vitx
from vitx.data import shapes_captions
from vitx.data.shapes_captions import PROMPT_TEMPLATES, prompts
from vitx.evaluate import evaluate
from vitx.prompts import similarities

MODEL = "shapes-clip"
SEED = 50_000  # fresh images: training uses data seeds >= 1,000,000, its test set 10,000 + seed


@pytest.fixture(scope="module")
def model():
    return vitx.load_model(MODEL)


def test_zero_shot_accuracy(model):
    data = shapes_captions(n=1000, seed=SEED, single=True)
    assert (data.object_shapes[:, 1:] < 0).all()
    scores = similarities(model, model.normalize(data.images), model.encode_text(list(prompts(PROMPT_TEMPLATES[0]))),
                          250)
    accuracy = (scores.argmax(1) == data.object_shapes[:, 0]).float().mean().item()
    assert accuracy >= 0.95, f"zero-shot accuracy {accuracy:.3f}"


@pytest.fixture(scope="module")
def row(model):
    drawn = shapes_captions(n=1200, seed=SEED)
    data = drawn.select((drawn.object_shapes[:, 2] < 0).nonzero()[:500, 0])
    assert len(data) == 500 and (data.object_shapes[:, :2] >= 0).all()
    results = evaluate(model, data, ["generic-attention"], ["prompt_pointing_game", "prompt_class_sensitivity"])
    return results.results["methods"]["generic-attention"]


def test_the_map_points_at_the_named_object(row):
    assert "error" not in row, row
    assert row["prompt_pointing_game"] >= 0.90, f"tolerant pointing game {row['prompt_pointing_game']:.3f}"


def test_the_map_prefers_the_named_object(row):
    assert "error" not in row, row
    assert row["prompt_class_sensitivity"] >= 0.90, f"class sensitivity {row['prompt_class_sensitivity']:.3f}"
