"""DINO (issue 18): the training rules on hand-built cases (centring and sharpening, the loss over view pairs, the EMA),
the multi-crop views, the recipe end to end, and the ``dino-attention`` method: the paper's mass mask on a hand-built
row, batched equals one image at a time, bad input."""
import math

import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.errors import VitxError
from vitx.evaluate_heads import head_jaccard
from vitx.methods.inherent.dino import mass_mask
from vitx.metrics.segmentation import jaccard, object_patches
from vitx.model import wrap
from vitx.models import create_model
from vitx.training import dino
from vitx.training.crops import multi_crop
from vitx.training.recipes import MEAN, STD


def test_teacher_targets_are_centred_then_sharpened():
    """softmax((g − c) / τ) by hand on a toy batch of two outputs over three dimensions."""
    out = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]])
    center = torch.tensor([[0.5, 1.0, 3.0]])
    got = dino.teacher_targets(out, center, 0.5)
    for row, expected_logits in zip(got, ([1.0, 2.0, 0.0], [-1.0, -2.0, 0.0])):
        e = [math.exp(v) for v in expected_logits]
        assert row.tolist() == pytest.approx([v / sum(e) for v in e])
    # sharper than the plain softmax: a lower temperature moves mass to the largest entry
    assert dino.teacher_targets(out, center, 0.04)[0, 1] > got[0, 1] > torch.softmax(out - center, -1)[0, 1]
    # centring removes what every output shares: a constant added to the outputs and the centre changes nothing
    assert torch.allclose(dino.teacher_targets(out + 7, center + 7, 0.5), got)
    # c <- 0.9 c + 0.1 mean(g): the batch mean is (0.5, 1, 3)
    assert dino.update_center(torch.zeros(1, 3), out)[0].tolist() == pytest.approx([0.05, 0.1, 0.3])
    assert dino.update_center(center, 2 * out)[0].tolist() == pytest.approx([0.55, 1.1, 3.3])


def test_loss_pairs_each_teacher_view_with_every_other_student_view():
    """Two global views and one local view of one image: the pairs (t1, s2), (t1, s3), (t2, s1), (t2, s3), by hand."""
    torch.manual_seed(0)
    student, targets = torch.randn(3, 4), torch.softmax(torch.randn(2, 4), -1)
    log_p = torch.log_softmax(student / 0.1, -1)
    ce = lambda t, s: -(targets[t] * log_p[s]).sum()
    expected = (ce(0, 1) + ce(0, 2) + ce(1, 0) + ce(1, 2)) / 4
    assert dino.dino_loss(student, targets, views=3).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ema_moves_the_teacher_towards_the_student():
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for module, value in ((teacher, 1.0), (student, 3.0)):
        torch.nn.init.constant_(module.weight, value)
        torch.nn.init.constant_(module.bias, value)
    dino.ema_update(teacher, student, 0.75)
    assert teacher.weight.tolist() == [[1.5, 1.5]] and teacher.bias.tolist() == [1.5]
    assert student.weight.tolist() == [[3.0, 3.0]]
    steps = 100
    assert dino.cosine(0.996, 1.0, 0, steps) == pytest.approx(0.996)
    assert dino.cosine(0.996, 1.0, steps // 2, steps) == pytest.approx(0.998)
    assert dino.teacher_temperature(0, steps) == pytest.approx(dino.WARMUP_TEACHER_TEMP)
    assert dino.teacher_temperature(steps - 1, steps) == pytest.approx(dino.TEACHER_TEMP)


def test_projection_head_is_normalised():
    torch.manual_seed(0)
    head = dino.DINOHead(8, out_dim=16, hidden=12, bottleneck=4)
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 16) and out.abs().max() <= 1 + 1e-6     # unit bottleneck times unit rows
    out.sum().backward()
    head.zero_grad()
    head(torch.randn(5, 8), freeze_last=True).sum().backward()
    assert head.last.grad is None and head.mlp[0].weight.grad is not None


def test_multi_crop_views_and_the_vit_at_the_local_size():
    images = shapes(n=3, seed=20_000).images
    views, local = multi_crop(images, 64, 32, 2, torch.Generator().manual_seed(0))
    again, _ = multi_crop(images, 64, 32, 2, torch.Generator().manual_seed(0))
    assert [v.shape for v in views + local] == [(3, 3, 64, 64)] * 2 + [(3, 3, 32, 32)] * 2
    assert torch.equal(views[1], again[1]) and 0 <= min(v.min() for v in views) and max(v.max() for v in views) <= 1
    net = create_model("vitx_shapes").eval()
    assert net.forward_features(local[0]).shape == (3, 1 + 16, 96)   # positions interpolated to the 4 x 4 grid


def test_recipe_trains_without_labels_and_loads_as_a_classifier(tmp_path, monkeypatch):
    monkeypatch.setattr(dino, "PROBE_IMAGES", 200)
    metrics = vitx.training.train("shapes-vit-dino", tmp_path, steps=2, batch_size=4, progress=False)
    assert set(metrics) == {"accuracy", "linear_accuracy", "knn_accuracy"}
    model = vitx.load_model(str(tmp_path / "shapes-vit-dino.safetensors"))
    assert model.config.num_classes == 8 and "never saw a label" in (tmp_path / "shapes-vit-dino.md").read_text()


def test_knn_votes_by_weighted_similarity():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    assert dino.knn_predict(train, labels, torch.tensor([[0.2, 1.0], [1.0, 0.05]]), 2, k=2).tolist() == [1, 0]


def test_mass_mask_keeps_the_smallest_set_holding_the_mass():
    row = torch.tensor([0.125, 0.5, 0.125, 0.25])
    assert mass_mask(row, 0.6).tolist() == [False, True, False, True]      # 0.75 >= 0.6; 0.5 alone is short
    assert mass_mask(row, 0.5).tolist() == [False, True, False, False]     # 0.5 exactly is enough
    assert mass_mask(row * 3, 0.6).tolist() == [False, True, False, True]  # shares, not raw values
    assert mass_mask(row, 1.0).all()
    # the authors' rule (visualize_attention.py): ascending order, cumulative share above 1 − mass
    torch.manual_seed(0)
    rows = torch.rand(50, 64).softmax(-1)
    values, order = rows.sort(-1)
    authors = torch.zeros_like(rows, dtype=torch.bool).scatter(-1, order, (values / values.sum(-1, keepdim=True))
                                                                .cumsum(-1) > 1 - 0.6)
    assert torch.equal(mass_mask(rows, 0.6), authors)


def test_object_patches_and_jaccard():
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True          # patch (0, 0) whole
    masks[0, :5, 8:16] = True        # patch (0, 1): 40 of 64 pixels
    masks[0, 8:11, :8] = True        # patch (1, 0): 24 of 64 pixels
    patches = object_patches(masks, (8, 8))
    assert patches.tolist() == [[[True, True], [False, False]]]
    other = torch.tensor([[[True, False], [True, False]]])
    assert jaccard(patches, other).tolist() == [pytest.approx(1 / 3)]


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


def test_maps_batched_equal_one_image_at_a_time(model):
    x = model.normalize(shapes(n=4, seed=20_000).images)
    together = vitx.explain(model, x, method="dino-attention", head=1, batch_size=4, normalize=False)
    alone = vitx.explain(model, x, method="dino-attention", head=1, batch_size=1, normalize=False)
    assert torch.allclose(together.token_maps, alone.token_maps, atol=1e-6)
    assert together.details["masks"] == alone.details["masks"]
    heads = torch.tensor(together.details["heads"])
    assert heads.shape == (4, 4, 8, 8) and torch.allclose(heads[:, 1], together.token_maps, atol=1e-5)
    assert (heads.sum((-2, -1)) <= 1 + 1e-4).all()      # shares of one row; the class token holds the rest
    mean = vitx.explain(model, x, method="dino-attention", normalize=False)
    assert torch.allclose(mean.token_maps, heads.mean(1), atol=1e-5)


def test_bad_input_is_refused_in_one_line(model):
    x = model.normalize(shapes(n=2, seed=20_000).images)
    for params, words in (({"head": 4}, "4 heads"), ({"head": -5}, "4 heads"), ({"mass": 0.0}, "(0, 1]"),
                          ({"mass": 1.5}, "(0, 1]")):
        with pytest.raises(VitxError, match=words.replace("(", r"\(").replace("]", r"\]")) as err:
            vitx.explain(model, x, method="dino-attention", **params)
        assert "\n" not in str(err.value)
    pooled = wrap(create_model("vitx_shapes", class_token=False, global_pool="avg"), mean=MEAN, std=STD)
    with pytest.raises(VitxError, match="class token"):
        vitx.explain(pooled, x, method="dino-attention")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.net.modules())


def test_head_jaccard_on_a_random_vit():
    torch.manual_seed(0)
    random_vit = wrap(create_model("vitx_shapes"), mean=MEAN, std=STD)
    scores = head_jaccard(random_vit, shapes(n=20, seed=20_000), batch_size=8)
    assert len(scores["per_head"]) == 4 and scores["best"] == max(scores["per_head"])
    assert 0 < scores["best"] < 0.3      # 0.11 measured: a random ViT's masks barely match the objects
