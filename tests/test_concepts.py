"""The Concept Transformer (issue 18): the shapes concept labels on hand-checked cases, the concept head's logits as the
linear map of its attention, and the method `concept-transformer` (exact shares, batching, bad input)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import vitx
from vitx.data import shapes
from vitx.data.concepts import (COLOUR_MARGIN, GLOBAL_CONCEPTS, SPATIAL_CONCEPTS, class_concepts, shapes_concepts,
                                spatial_labels, vertices)
from vitx.data.shapes import CLASS_NAMES, _render
from vitx.models import create_model
from vitx.models.concepts import ConceptAttention
from vitx.training.concepts import explanation_loss


def names(indices):
    return {GLOBAL_CONCEPTS[i] for i in indices}


def test_class_concepts_follow_the_shapes():
    assert names(class_concepts("circle")) == {"no corners", "curved"}
    assert names(class_concepts("square")) == {"has corners", "4 corners", "straight", "convex corners"}
    assert names(class_concepts("triangle")) == {"has corners", "3 corners", "straight", "convex corners"}
    assert names(class_concepts("star")) == {"has corners", "10 corners", "straight", "concave corner"}
    assert names(class_concepts("cross")) == {"has corners", "12 corners", "straight", "concave corner"}
    assert names(class_concepts("heart")) == {"has corners", "2 corners", "curved", "concave corner"}
    assert names(class_concepts("crescent")) == {"has corners", "2 corners", "curved", "convex corners"}
    assert names(class_concepts("lshape")) == {"has corners", "6 corners", "straight", "concave corner"}
    assert len({frozenset(class_concepts(name)) for name in CLASS_NAMES}) == len(CLASS_NAMES)   # each class its own


def test_spatial_labels_of_a_hand_drawn_square():
    """An axis-aligned square over pixels [12, 36)² on an 8 x 8 grid of 8-pixel patches: its vertices (square's local
    (±1, 0), (0, ±1) turned by 45°, radius 12√2 about (24, 24)) are the pixel corners (12, 12) ... (36, 36)."""
    mask = np.zeros((64, 64), bool)
    mask[12:36, 12:36] = True
    labels = spatial_labels(mask, "square", (24.0, 24.0, 12 * math.sqrt(2), math.pi / 4), 8).reshape(8, 8)
    B, I, S, K = (SPATIAL_CONCEPTS.index(n) for n in ("background", "interior", "straight edge", "corner"))
    expected = np.full((8, 8), B)
    expected[1:5, 1:5] = [[K, S, S, K], [S, I, I, S], [S, I, I, S], [K, S, S, K]]
    np.testing.assert_array_equal(labels, expected)


def test_spatial_labels_of_a_circle_have_curved_edges_and_no_corner():
    yy, xx = np.mgrid[:64, :64] + 0.5
    mask = np.hypot(xx - 32, yy - 32) <= 20
    labels = spatial_labels(mask, "circle", (32.0, 32.0, 20.0, 0.3), 8).reshape(8, 8)
    assert labels[0, 0] == SPATIAL_CONCEPTS.index("background")
    assert labels[3, 3] == labels[4, 4] == SPATIAL_CONCEPTS.index("interior")
    assert labels[1, 3] == labels[4, 1] == SPATIAL_CONCEPTS.index("curved edge")    # the outline crosses them
    assert SPATIAL_CONCEPTS.index("corner") not in labels


def test_concepts_come_with_the_very_images_of_shapes():
    ours, theirs = shapes_concepts(40, seed=20_000), shapes(40, seed=20_000)
    for a, b in ((ours.images, theirs.images), (ours.labels, theirs.labels), (ours.masks, theirs.masks)):
        assert torch.equal(a, b)


def test_colour_is_the_objects_dominant_channel_read_under_its_mask():
    data = shapes_concepts(60, seed=20_001)
    for i in range(len(data)):
        pixels = data.images[i][:, data.masks[i]]
        assert torch.allclose(pixels, data.colours[i][:, None])         # one solid colour, exactly
        top = data.colours[i].sort().values
        colour = data.global_concepts[i, :3]
        if top[2] - top[1] >= COLOUR_MARGIN:
            assert colour.argmax() == data.colours[i].argmax() and colour.sum() == 1
        else:
            assert colour.sum() == 0                                   # a near-tie names no colour
        assert names(torch.nonzero(data.global_concepts[i, 3:]).flatten() + 3) == \
            names(class_concepts(CLASS_NAMES[data.labels[i]]))


def test_vertices_lie_on_the_drawn_outline():
    """Every vertex computed from an object's pose is within 3 pixels of its mask's outline (star tips rasterise
    short of the exact point)."""
    worst = 0.0
    for i in range(80):
        poses = []
        _, ((c, mask),) = _render(np.random.default_rng([20_002, 0, i]), "single", 64, poses)
        ys, xs = np.nonzero(mask & ~ndimage.binary_erosion(mask))
        for x, y in vertices(CLASS_NAMES[c], poses[0]):
            worst = max(worst, np.hypot(xs + 0.5 - x, ys + 0.5 - y).min())
    assert worst < 3.0, worst


def test_concept_logits_are_the_linear_map_of_the_attention():
    """A hand-built head: D = 2, one head, concepts e_1 = (1, 0), e_2 = (0, 1), W_q = W_k = W_v = I, W_o = [[1, 0],
    [0, 2]], b = (0.5, 0): a token x = (ln 2 · √2, 0) attends a = softmax(x·e_j / √2) = (2/3, 1/3), and
    logits = a M + b with M = V W_oᵀ = [[1, 0], [0, 2]]: (2/3 + 0.5, 2/3)."""
    head = ConceptAttention(2, 2, 2, 1)
    with torch.no_grad():
        head.concepts.copy_(torch.eye(2))
        head.q.weight.copy_(torch.eye(2))
        head.kv.weight.copy_(torch.eye(2).repeat(2, 1))
        head.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        head.proj.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[math.log(2) * math.sqrt(2), 0.0]]])
    logits, attention = head(x)
    torch.testing.assert_close(attention[0, 0, 0], torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(head.value_map()[0], torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(logits[0, 0], torch.tensor([2 / 3 + 0.5, 2 / 3]))


def test_several_heads_are_linear_in_each_heads_attention():
    torch.manual_seed(0)
    head = ConceptAttention(8, 5, 3, 2)
    x = torch.randn(4, 6, 8)
    logits, attention = head(x)
    linear = torch.einsum("bhnc,hck->bnk", attention, head.value_map()) + head.proj.bias
    torch.testing.assert_close(logits, linear)
    torch.testing.assert_close(attention.sum(-1), torch.ones(4, 2, 6))


def test_concept_vit_sums_the_global_and_the_mean_spatial_outputs():
    torch.manual_seed(0)
    net = create_model("vitx_shapes_concepts").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens = net.forward_features(x)
        out = net.concepts(x)
        g, _ = net.global_head(tokens[:, :1])
        s, _ = net.spatial_head(tokens[:, 1:])
    torch.testing.assert_close(out.logits, g[:, 0] + s.mean(1))
    torch.testing.assert_close(net(x), out.logits)
    assert out.global_attention.shape == (3, 1, len(GLOBAL_CONCEPTS))
    assert out.spatial_attention.shape == (3, 1, 64, len(SPATIAL_CONCEPTS))


def test_explanation_loss_is_the_authors_concept_cost():
    """C x MSE against the targets normalised to sum 1; rows without a label are left out."""
    attention = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert explanation_loss(attention, targets).item() == pytest.approx(0.0)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = 3 * ((0.5 ** 2 + 0.5 ** 2) + (0.2 ** 2 + 0.3 ** 2 + 0.5 ** 2)) / 6
    assert explanation_loss(attention, targets).item() == pytest.approx(expected)


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit-concepts")


@pytest.fixture(scope="module")
def x(model):
    return model.normalize(shapes(6, seed=20_003).images)


def test_map_and_global_share_add_up_to_the_target_logit(model, x):
    """Σ_i m_t(i) + the global share = y_t, for the predicted class and for another target."""
    for targets in (None, torch.tensor([0, 1, 2, 3, 4, 5])):
        exp = vitx.explain(model, x, method="concept-transformer", target=targets, normalize=False)
        total = exp.token_maps.flatten(1).sum(1) + torch.tensor(exp.details["global_share"])
        torch.testing.assert_close(total, exp.logits.gather(1, exp.targets[:, None])[:, 0], atol=1e-4, rtol=1e-4)


def test_details_name_the_concepts(model, x):
    exp = vitx.explain(model, x, method="concept-transformer")
    assert list(exp.details["global_concepts"][0]) == list(GLOBAL_CONCEPTS)
    assert sum(exp.details["global_concepts"][0].values()) == pytest.approx(1.0, abs=1e-3)
    spatial = torch.tensor(exp.details["spatial_concepts"])
    assert spatial.shape == (6, len(SPATIAL_CONCEPTS), 8, 8)
    torch.testing.assert_close(spatial.sum(1), torch.ones(6, 8, 8))
    assert exp.details["spatial_concept_names"][0] == list(SPATIAL_CONCEPTS)


def test_batched_equals_one_image_at_a_time(model, x):
    together = vitx.explain(model, x, method="concept-transformer", normalize=False)
    for i in range(len(x)):
        alone = vitx.explain(model, x[i:i + 1], method="concept-transformer", normalize=False)
        torch.testing.assert_close(alone.token_maps[0], together.token_maps[i], atol=1e-5, rtol=1e-4)
        assert alone.details["global_concepts"][0] == pytest.approx(together.details["global_concepts"][i], abs=1e-4)


def test_existing_methods_run_on_the_concept_model(model, x):
    for method in ("generic-attention", "gradcam", "rollout"):
        exp = vitx.explain(model, x[:2], method=method)
        assert exp.maps.shape == (2, 64, 64) and torch.isfinite(exp.maps).all()


def test_refuses_a_model_without_concepts(x):
    with pytest.raises(vitx.VitxError, match="has none") as err:
        vitx.explain(vitx.load_model("shapes-vit"), x[:1], method="concept-transformer")
    assert "\n" not in str(err.value)


def test_recipe_trains_scores_and_records_its_study(tmp_path):
    """Two steps of shapes-vit-concepts from shapes-vit, and of its λ = 0 study; the card holds both."""
    import shutil
    from dataclasses import replace

    from vitx.checkpoint import read_metadata
    from vitx.training import RECIPES, train
    from vitx.training.concepts import add_study
    from vitx.zoo import zoo_path

    for out in ("zoo", "study"):
        (tmp_path / out).mkdir()
        shutil.copy(zoo_path("shapes-vit"), tmp_path / out)
    recipe = RECIPES["shapes-vit-concepts"]
    metrics = train("shapes-vit-concepts", tmp_path / "zoo", steps=2, batch_size=4, progress=False)
    train("shapes-vit-concepts", tmp_path / "study", steps=2, batch_size=4, progress=False,
          recipe=replace(recipe, explanation=0.0))
    assert set(metrics["global_top1"]) == {"colour", "corners", "number of corners", "outline", "concavity"}
    assert metrics["reference_accuracy"] > 0.99 and 0 <= metrics["spatial_top1"] <= 1
    path = tmp_path / "zoo" / "shapes-vit-concepts.safetensors"
    add_study(path, tmp_path / "study" / "shapes-vit-concepts.safetensors")
    meta = read_metadata(path)
    assert meta["kind"] == "concepts" and meta["explanation_weight"] == recipe.explanation
    assert meta["study"]["explanation_weight"] == 0.0
    card = path.with_suffix(".md").read_text()
    assert f"λ = {recipe.explanation:g}" in card and "The same recipe with λ = 0" in card
    assert vitx.load_model(str(path)).net.global_head.concepts.shape == (len(GLOBAL_CONCEPTS), 96)
