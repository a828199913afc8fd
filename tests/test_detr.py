"""vitx's DETR-like detector: its data, its loss, its scoring and how explain() picks its objects."""
import pytest
import torch

import vitx
from vitx.data import shapes
from vitx.data.detection import coco_ground_truth, mask_box, object_boxes
from vitx.training.detr import match, set_loss
from vitx.metrics.detection import coco_ap, coco_detections
from vitx.model import wrap
from vitx.models import create_model


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return wrap(create_model("detr_shapes", encoder_layers=1, decoder_layers=1).eval(), mean=(0.5,) * 3,
                std=(0.25,) * 3)


def test_mask_box_is_the_edges_of_the_outermost_pixels():
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:9] = True
    mask[6, 4] = True
    assert mask_box(mask).tolist() == [3.0, 2.0, 9.0, 7.0]


def test_object_boxes_hold_every_object_of_a_multi_image():
    data = shapes(8, seed=1, variant="multi")
    for objects, labels, masks in zip(object_boxes(data), data.labels, data.masks):
        assert objects["labels"].tolist() == labels.nonzero().flatten().tolist()
        for box, mask in zip(objects["boxes"], objects["masks"]):
            x0, y0, x1, y1 = box.long().tolist()
            assert mask[y0:y1, x0:x1].sum() == mask.sum()         # the box holds the whole mask
            assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()
    with pytest.raises(vitx.VitxError, match="multi"):
        object_boxes(shapes(2, seed=1))


def test_coco_ap_scores_perfect_boxes_one_and_shifted_boxes_less():
    data = shapes(20, seed=3, variant="multi")
    truth = coco_ground_truth(data)
    assert len(truth["annotations"]) == int(data.labels.sum())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9, "bbox": a["bbox"]}
               for a in truth["annotations"]]
    assert coco_ap(truth, perfect) == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0}
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] * 0.4, *d["bbox"][1:]]} for d in perfect]  # IoU 0.43
    scores = coco_ap(truth, shifted)
    assert scores["ap50"] == 0.0 and scores["ap"] == 0.0
    wrong_class = [{**d, "category_id": d["category_id"] % 8 + 1} for d in perfect]
    assert coco_ap(truth, wrong_class)["ap50"] == 0.0
    assert coco_ap(truth, [])["ap"] == 0.0


def test_coco_detections_convert_pixel_boxes_per_image():
    found = coco_detections(torch.tensor([[0.9, 0.2]]), torch.tensor([[3, 0]]),
                            torch.tensor([[[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 1.0, 1.0]]]))
    assert found[0] == {"image_id": 0, "category_id": 4, "score": pytest.approx(0.9), "bbox": [1.0, 2.0, 4.0, 8.0]}
    assert len(found) == 2


def test_matching_pairs_each_object_with_its_cheapest_query():
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]]])
    logits = torch.zeros(1, 3, 4)
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.21, 0.2, 0.1, 0.1]])}]
    (queries, objects), = match(logits, boxes, targets)
    assert dict(zip(objects.tolist(), queries.tolist())) == {0: 1, 1: 0}
    perfect = torch.full((1, 3, 4), -20.0)
    perfect[0, 1, 1] = perfect[0, 0, 0] = perfect[0, 2, 3] = 20.0
    assert set_loss(perfect, boxes, [{"labels": torch.tensor([1, 0]), "boxes": boxes[0, [1, 0]]}]) < 1e-6
    assert set_loss(logits, boxes, targets) > 1.0


def test_detector_outputs_every_layer_for_the_auxiliary_losses(detector):
    x = torch.randn(2, 3, 64, 64)
    logits, boxes = detector.net(x, every_layer=True)
    assert logits.shape == (1, 2, 8, 9) and boxes.shape == (1, 2, 8, 4)
    assert torch.allclose(detector(x), logits[-1], atol=1e-6)
    assert ((boxes >= 0) & (boxes <= 1)).all()


def test_explain_picks_objects_by_threshold_query_or_class(detector):
    x = torch.randn(3, 3, 64, 64)
    every = vitx.explain(detector, x, "generic-attention", score_threshold=0.0)
    probs = detector(x).softmax(-1)
    expected = int((probs.argmax(-1) != 8).sum())
    assert len(every) == len(every.objects) == expected
    assert every.maps.shape == (expected, 64, 64) and every.logits.shape == (expected, 9)
    for row, target, logits in zip(every.objects, every.targets, every.logits):
        assert row["label"] == int(target) and row["class"] == vitx.data.CLASS_NAMES[row["label"]]
        assert torch.allclose(logits.softmax(-1), probs[row["image"], row["query"]], atol=1e-5)
        assert row["score"] == pytest.approx(probs[row["image"], row["query"], :8].max().item(), abs=1e-4)
    picked = vitx.explain(detector, x, "generic-attention", target=[5, 2])
    assert [(o["image"], o["query"]) for o in picked.objects] == [(i, q) for i in range(3) for q in (2, 5)]
    one = vitx.explain(detector, x[1:2], "generic-attention", target=[5, 2])
    assert torch.allclose(one.token_maps, picked.token_maps[2:4], atol=1e-5)
    name = every.objects[0]["class"]
    named = vitx.explain(detector, x, "generic-attention", target=name.upper(), score_threshold=0.0)
    assert {o["class"] for o in named.objects} == {name}
    assert len(named) == sum(o["class"] == name for o in every.objects)


def test_objects_found_before_are_explained_without_detecting_again(detector, monkeypatch):
    import vitx.objects
    x = torch.randn(3, 3, 64, 64)
    found = vitx.objects.find_objects(detector, x, None, 0.0, 32)
    fresh = vitx.explain(detector, x, "generic-attention", score_threshold=0.0)
    calls = []
    monkeypatch.setattr(vitx.objects, "detect", lambda *args: calls.append(args))
    given = vitx.explain(detector, x, "generic-attention", target=found[1:4])
    assert calls == [] and given.objects == fresh.objects[1:4]
    assert torch.allclose(given.token_maps, fresh.token_maps[1:4], atol=1e-6)
    with pytest.raises(vitx.VitxError, match="lie in image 2, and there are 2 images"):
        vitx.explain(detector, x[:2], "generic-attention", target=found[found.image == 2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(target=8), "target query 8 is out of range: this detector has 8 queries"),
    (dict(target="dog"), "unknown target class 'dog'"),
    (dict(target=[1, "star"]), "a query index or a class name"),
    (dict(target=[]), "empty list"),
    (dict(score_threshold=1.5), r"score_threshold must be a number in \[0, 1\]"),
    (dict(score_threshold="high"), "score_threshold must be a number"),
])
def test_bad_detector_targets_are_refused(detector, kwargs, message):
    with pytest.raises(vitx.VitxError, match=message):
        vitx.explain(detector, torch.randn(1, 3, 64, 64), "generic-attention", **kwargs)


def test_no_detection_gives_an_empty_explanation_and_a_warning(detector):
    with pytest.warns(UserWarning, match="no detection with a score above 1"):
        exp = vitx.explain(detector, torch.randn(2, 3, 64, 64), "generic-attention", score_threshold=1.0)
    assert len(exp) == 0 and exp.objects == [] and exp.maps.shape == (0, 64, 64)


def test_score_threshold_is_refused_on_a_classifier():
    model = vitx.load_model("shapes-vit")
    with pytest.raises(vitx.VitxError, match="score_threshold picks a detector's objects"):
        vitx.explain(model, torch.zeros(1, 3, 64, 64), "generic-attention", score_threshold=0.5)


def test_a_half_precision_detector_finds_and_explains_its_objects_in_float32():
    """find_objects ran the bfloat16 net on a float32 input (a dtype error); now it converts the weights as explain
    does, finds the objects of the same net in float32, and gives the weights back in bfloat16."""
    torch.manual_seed(0)
    net = create_model("detr_shapes", encoder_layers=1, decoder_layers=1).eval().to(torch.bfloat16)
    half = wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3)
    full = wrap(create_model("detr_shapes", encoder_layers=1, decoder_layers=1).eval(), mean=(0.5,) * 3,
                std=(0.25,) * 3)
    full.net.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="the model is bfloat16") as caught:
        exp = vitx.explain(half, x, "raw-attention", score_threshold=0.0)
    assert len([w for w in caught if "bfloat16" in str(w.message)]) == 1     # once, from the explanation
    assert exp.objects == vitx.explain(full, x, "raw-attention", score_threshold=0.0).objects
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    with torch.inference_mode(), pytest.warns(UserWarning, match="bfloat16"):  # weights not made inference tensors
        assert vitx.explain(half, x, "generic-attention", score_threshold=0.0).objects == exp.objects
    assert not any(p.is_inference() for p in net.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["generic-attention", "rollout", "attention-gradcam", "transformer-attribution",
                                    "saliency"])
def test_objects_on_cuda_are_explained_as_on_the_cpu_and_an_empty_explanation_matches(detector, method):
    """On CUDA: the same objects and maps as on the CPU (images given on the CPU), and an explanation of no object
    holds its tensors where an explanation of some does (its targets and degenerate flags were left on the CPU)."""
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    cpu = vitx.explain(detector, x, method, target=[0, 5])
    gpu_model = wrap(create_model("detr_shapes", encoder_layers=1, decoder_layers=1).eval(), mean=(0.5,) * 3,
                     std=(0.25,) * 3)
    gpu_model.net.load_state_dict(detector.net.state_dict())
    gpu_model = gpu_model.to("cuda")
    gpu = vitx.explain(gpu_model, x, method, target=[0, 5])
    assert gpu.objects == cpu.objects or all(
        (a["image"], a["query"], a["label"]) == (b["image"], b["query"], b["label"])
        for a, b in zip(gpu.objects, cpu.objects))
    assert torch.allclose(gpu.maps.cpu(), cpu.maps, atol=1e-3)
    with pytest.warns(UserWarning, match="no detection"):
        empty = vitx.explain(gpu_model, x, method, score_threshold=1.0)
    for name in ("maps", "targets", "logits", "degenerate"):
        assert getattr(empty, name).device == getattr(gpu, name).device, name
        assert getattr(empty, name).dtype == getattr(gpu, name).dtype, name


def test_pixel_boxes_scale_x_by_the_width_and_y_by_the_height():
    from vitx.objects import pixel_boxes

    boxes = torch.tensor([[0.5, 0.25, 0.5, 0.5]], dtype=torch.bfloat16)
    out = pixel_boxes(boxes, (40, 80))
    assert out.dtype == torch.float32 and out.tolist() == [[20.0, 0.0, 60.0, 20.0]]
