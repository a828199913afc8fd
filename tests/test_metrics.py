"""vitx.metrics: hand-computed values on tiny maps, the oracle / random / inverted ordering on every metric,
agreement with Quantus 0.6.0, scipy, scikit-learn and scikit-image as oracles, the perturbation protocol
(one batched forward per step, exact fractions, token removal) and the randomisation check's isolation."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import vitx
import vitx.metrics as M
from vitx.adapters import Adapter
from vitx.errors import VitxError
from vitx.model import Model, ModelConfig
from vitx.models import create_model

LEADERBOARD = {"perturbation_positive_auc", "perturbation_negative_auc", "perturbation_positive_auc_tokens",
               "perturbation_negative_auc_tokens", "insertion_auc", "deletion_auc",
               "pixel_accuracy", "miou", "map", "pointing_game", "pointing_game_tolerant", "energy_pointing_game",
               "relevance_rank_accuracy", "class_sensitivity", "randomization_spearman", "sparseness"}
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


# ---------------------------------------------------------------------------------------------- models

class PlainAdapter(Adapter):
    """The least an adapter needs for pixel-space metrics: forward (inherited), no blocks."""

    def blocks(self):
        return []


class Region(nn.Module):
    """Class 0's logit is ``gain`` · (mean of the input over a known region − 0.5); class 1's is 0. Counts its
    forward passes and, when ``record`` is on, keeps every input it sees."""

    def __init__(self, size, region, gain=8.0, checker=False, offset=0.5):
        super().__init__()
        weight = torch.zeros(3, *size)
        weight[:, region[0], region[1]] = 1.0
        if checker:                                # +1/-1 alternately: blurring the region removes its evidence
            weight *= 1 - 2 * ((torch.arange(size[0])[:, None] + torch.arange(size[1])) % 2).float()
        self.weight = nn.Parameter(weight / weight.abs().sum(), requires_grad=False)  # Model.device reads one
        self.gain, self.offset = gain, offset
        self.calls, self.record, self.inputs = 0, False, []

    def forward(self, x):
        self.calls += 1
        if self.record:
            self.inputs.append(x.detach().clone())
        score = self.gain * ((x * self.weight).flatten(1).sum(1) - self.offset)
        return torch.stack([score, torch.zeros_like(score)], 1)


def region_model(size=(16, 16), region=(slice(4, 12), slice(4, 12)), patch=(4, 4), net=None, **config):
    net = Region(size, region) if net is None else net
    cfg = ModelConfig(image_size=size, patch_size=patch, num_classes=2, num_prefix_tokens=0, cls_index=None,
                      **{**IDENTITY, **config})
    return Model(net, PlainAdapter(net), cfg).eval()


def region_mask(batch, size=(16, 16), region=(slice(4, 12), slice(4, 12))):
    mask = torch.zeros(batch, *size, dtype=torch.bool)
    mask[:, region[0], region[1]] = True
    return mask


def tiny_vit(seed=0):
    """A 2-block vitx ViT on 16x16 images: a 4x4 grid of 4x4 patches and a class token, 3 classes."""
    torch.manual_seed(seed)
    net = create_model("vit_small_patch16_224", image_size=16, patch_size=4, depth=2, embed_dim=16, num_heads=2,
                       num_classes=3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    return vitx.load_model(net.eval())


def rand(*shape, seed=0, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def quantus():
    import quantus
    return quantus


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


# ---------------------------------------------------------------------------------------------- localisation

RAMP = torch.arange(16.0).view(1, 4, 4) - 5           # values -5 .. 10, row-major


def corner(rows, cols):
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, rows, cols] = True
    return mask


def test_localisation_hand_computed_on_4x4_maps():
    maps = RAMP.expand(2, 4, 4)
    masks = torch.cat([corner(slice(0, 2), slice(2, 4)), corner(slice(2, 4), slice(2, 4))])
    # mask 1 holds -3, -2, 1, 2; mask 2 holds 5, 6, 9, 10; the maximum 10 is the bottom-right pixel
    assert M.pointing_game(maps, masks).tolist() == [0.0, 1.0]
    # positive relevance 1 + 2 + ... + 10 = 55: inside 1 + 2 = 3 and 5 + 6 + 9 + 10 = 30
    torch.testing.assert_close(M.energy_pointing_game(maps, masks), torch.tensor([3 / 55, 30 / 55]))
    # K = 4: the top four are 7, 8, 9, 10; none in mask 1, two (9, 10) in mask 2
    assert M.relevance_rank_accuracy(maps, masks).tolist() == [0.0, 0.5]


def test_pointing_game_tolerance_counts_peaks_near_the_mask():
    """A peak 3 pixels right of a one-pixel mask: a miss when strict or within 2.9 px, a hit within 3 px;
    a diagonal neighbour is sqrt(2) away. The tolerant row scales Zhang et al.'s 15 px at 224 to the size."""
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 4, 2] = True
    peak = torch.zeros(1, 8, 8)
    peak[0, 4, 5] = 1
    assert [M.pointing_game(peak, mask, tolerance=t).item() for t in (0, 2.9, 3)] == [0.0, 0.0, 1.0]
    diagonal = torch.zeros(1, 8, 8)
    diagonal[0, 5, 3] = 1
    assert [M.pointing_game(diagonal, mask, tolerance=t).item() for t in (1, 1.5)] == [0.0, 1.0]
    big_mask, big_peak = torch.zeros(1, 224, 224, dtype=torch.bool), torch.zeros(1, 224, 224)
    big_mask[0, 100, 100] = True
    big_peak[0, 100, 115], big_peak[0, 100, 116] = 1, 1   # 15 px away (a hit) and 16 px away (a miss)
    assert M.pointing_game_tolerant(big_peak, big_mask).item() == 0.5
    with pytest.raises(VitxError, match="tolerance"):
        M.pointing_game(peak, mask, tolerance=-1)


def test_localisation_ties_score_their_expectation():
    mask = corner(slice(0, 2), slice(0, 2))
    constant = torch.ones(1, 4, 4)
    for metric in (M.pointing_game, M.energy_pointing_game, M.relevance_rank_accuracy):
        assert metric(constant, mask).item() == pytest.approx(4 / 16)
    assert M.energy_pointing_game(-constant, mask).item() == 0.0   # no positive relevance: defined as 0
    # a 3 inside the mask and three tied 2s (one inside) for K = 2 places: 1 + 1 * (1/3) hits of 2
    tied = torch.zeros(1, 4, 4)
    tied[0, 0, 0], tied[0, 0, 1], tied[0, 3, 3], tied[0, 2, 3] = 3, 2, 2, 2
    two = torch.zeros(1, 4, 4, dtype=torch.bool)
    two[0, 0, 0] = two[0, 0, 1] = True
    assert M.relevance_rank_accuracy(tied, two).item() == pytest.approx(2 / 3)
    # two tied maxima, one inside the mask
    peaks = torch.zeros(1, 4, 4)
    peaks[0, 0, 0] = peaks[0, 3, 3] = 1
    assert M.pointing_game(peaks, mask).item() == 0.5


def test_segmentation_hand_computed_and_map_is_sklearn_average_precision():
    from sklearn.metrics import average_precision_score
    maps = (torch.arange(16.0).view(1, 4, 4) + 3) * 2     # any scale: min-max scaled to k/15
    mask = corner(slice(2, 4), slice(2, 4))               # 10, 11, 14, 15
    out = M.segmentation(maps, mask)
    # foreground predicted where k/15 > mean 0.5: the bottom 8 pixels; 4 of them true, all 8 others true bg
    assert out["pixel_accuracy"].item() == pytest.approx(12 / 16)
    assert out["miou"].item() == pytest.approx((4 / 8 + 8 / 12) / 2)
    r = np.arange(16) / 15
    labels = mask.flatten().numpy()
    pooled = average_precision_score(np.r_[labels, ~labels], np.r_[r, 1 - r])
    assert out["map"].item() == pytest.approx(pooled, abs=1e-6)
    # the vectorised AP equals scikit-learn's, ties included
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (5, 40), generator=g).float()
    truth = torch.rand(5, 40, generator=g) > 0.5
    expected = [average_precision_score(truth[i].numpy(), scores[i].numpy()) for i in range(5)]
    np.testing.assert_allclose(M.average_precision(scores, truth).numpy(), expected, atol=1e-12)


def test_class_sensitivity_hand_computed():
    maps = torch.arange(16.0).view(1, 4, 4).expand(4, 4, 4)
    masks = torch.zeros(4, 3, 4, 4, dtype=torch.bool)
    masks[:, 0, 0:2, 0:2] = True        # 0, 1, 4, 5: mean 2.5, total 10
    masks[:, 1, 2:4, 2:4] = True        # 10, 11, 14, 15: mean 12.5
    masks[:, 2, 0, 3] = True            # 3: mean 3, total 3 (smaller than class 0's total, larger mean)
    masks[3, 1:] = False                # image 3: only class 0 present
    scores = M.class_sensitivity(maps, masks, torch.tensor([0, 1, 2, 0]))
    assert scores[:3].tolist() == [0.0, 1.0, 0.5] and math.isnan(scores[3].item())
    with pytest.raises(VitxError, match="mask of target class 1 in image 3 is empty"):
        M.class_sensitivity(maps, masks, torch.tensor([0, 1, 2, 1]))


def random_boxes(batch, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(batch):
        h, w = torch.randint(3, 9, (2,), generator=g).tolist()
        top = torch.randint(0, size - h, (1,), generator=g).item()
        left = torch.randint(0, size - w, (1,), generator=g).item()
        masks[i, top:top + h, left:left + w] = True
    return masks


def test_oracle_best_random_chance_inverted_worst_on_localisation():
    masks = random_boxes(200)
    oracle = masks.float() + 0.001 * rand(*masks.shape, seed=1)
    inverted = -oracle
    random = rand(*masks.shape, seed=2)
    chance = masks.flatten(1).float().mean(1)
    for metric in (M.pointing_game, M.energy_pointing_game, M.relevance_rank_accuracy):
        best, worst, middle = metric(oracle, masks), metric(inverted, masks), metric(random, masks)
        assert best.min() > 0.9 and worst.max() < 0.05, metric.__name__
        assert abs(middle.mean() - chance.mean()) < 0.05, metric.__name__
    assert M.pointing_game(oracle, masks).eq(1).all() and M.relevance_rank_accuracy(oracle, masks).eq(1).all()
    seg = {name: M.segmentation(m, masks)
           for name, m in (("oracle", oracle), ("random", random), ("inverted", inverted))}
    for key in ("pixel_accuracy", "miou", "map"):
        assert seg["oracle"][key].min() > 0.99
        assert seg["oracle"][key].mean() > seg["random"][key].mean() > seg["inverted"][key].mean(), key
    # class sensitivity: two objects per image, the oracle map is the target's own mask
    multi = torch.stack([masks, random_boxes(200, seed=5)], 1)
    multi[:, 1] &= ~masks
    keep = multi[:, 1].flatten(1).any(1)
    multi, targets = multi[keep], torch.zeros(int(keep.sum()), dtype=torch.long)
    own = multi[:, 0].float() + 0.01 * rand(*multi[:, 0].shape, seed=6)
    assert M.class_sensitivity(own, multi, targets).eq(1).all()
    assert M.class_sensitivity(-own, multi, targets).eq(0).all()
    assert abs(M.class_sensitivity(random[keep], multi, targets).mean() - 0.5) < 0.15


def test_sparseness_is_the_gini_index():
    maps = torch.tensor([[0.0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 0, 0], [-3, 0, 0, 0], [0, 0, 0, 0]]).view(5, 2, 2)
    torch.testing.assert_close(M.sparseness(maps), torch.tensor([0.75, 0.0, 0.5, 0.75, 0.0]))
    spiky = torch.zeros(1, 8, 8)
    spiky[0, 2, 5] = 1
    assert M.sparseness(spiky).item() == pytest.approx(63 / 64)
    noisy = rand(3, 8, 8, seed=1, low=-1)
    torch.testing.assert_close(M.sparseness(noisy), M.sparseness(-7 * noisy))


# ---------------------------------------------------------------------------------------------- errors

def test_errors_name_the_problem():
    maps, masks = rand(2, 4, 4), corner(slice(0, 2), slice(0, 2)).expand(2, 4, 4)
    with pytest.raises(VitxError, match=r"maps must be a \(B, H, W\) tensor"):
        M.pointing_game(maps[0], masks)
    with pytest.raises(VitxError, match="do not match"):
        M.energy_pointing_game(maps, masks[:, :3])
    with pytest.raises(VitxError, match="image 1 is empty"):
        M.relevance_rank_accuracy(maps, torch.stack([masks[0], torch.zeros(4, 4, dtype=torch.bool)]))
    with pytest.raises(VitxError, match="masks must be bool"):
        M.segmentation(maps, masks.float())
    with pytest.raises(VitxError, match="NaN"):
        M.sparseness(torch.full((1, 2, 2), float("nan")))
    model = region_model()
    x, m = rand(2, 3, 16, 16), rand(2, 16, 16)
    with pytest.raises(VitxError, match="unknown removal 'noise'"):
        M.perturbation_test(model, x, [0, 0], m, removal="noise")
    with pytest.raises(VitxError, match="unknown perturbation order"):
        M.perturbation_test(model, x, [0, 0], m, order="both")
    with pytest.raises(VitxError, match="do not match the input"):
        M.perturbation_test(model, x, [0, 0], m[:, :8])
    with pytest.raises(VitxError, match=r"targets must be \(2,\)"):
        M.insertion_deletion(model, x, [0, 0, 0], m)
    with pytest.raises(VitxError, match="out of range"):
        M.insertion_deletion(model, x, [0, 5], m)
    with pytest.raises(VitxError, match="steps must be"):
        M.insertion_deletion(model, x, [0, 0], m, steps=0)
    with pytest.raises(VitxError, match="unknown metric 'iou'"):
        M.compute(["iou"], maps=maps, masks=masks)
    with pytest.raises(VitxError, match="needs masks"):
        M.compute(["miou"], maps=maps)


# ---------------------------------------------------------------------------------------------- Quantus

def quantus_inputs(batch=6, size=(12, 10), seed=0):
    region = (slice(2, 8), slice(3, 7))
    mask = region_mask(batch, size, region)
    maps = rand(batch, *size, seed=seed, low=-0.5)
    maps[::2] += 2 * mask[::2]                     # half the maps point inside the mask
    return mask, maps, region


@pytest.mark.parametrize("name", ["PointingGame", "RelevanceRankAccuracy", "RelevanceMassAccuracy", "Sparseness"])
def test_agrees_with_quantus_on_maps(quantus, name):
    """Quantus's PointingGame, RelevanceRankAccuracy and Sparseness are vitx's pointing_game,
    relevance_rank_accuracy and sparseness (continuous random maps: no ties, where vitx takes the expectation
    and Quantus a sort order). RelevanceMassAccuracy, Σ m·mask / Σ m, equals the energy pointing game only
    on non-negative maps (the pointing game counts positive relevance only), so that one gets |map|."""
    mask, maps, region = quantus_inputs()
    if name == "RelevanceMassAccuracy":
        maps = maps.abs()
    model = region_model((12, 10), region, patch=(3, 5))
    x = rand(len(maps), 3, 12, 10, seed=9)
    ours = {"PointingGame": M.pointing_game, "RelevanceRankAccuracy": M.relevance_rank_accuracy,
            "RelevanceMassAccuracy": M.energy_pointing_game}.get(name)
    settings = {"disable_warnings": True} if name == "Sparseness" else {"disable_warnings": True, "normalise": False}
    metric = getattr(quantus, name)(**settings)          # Sparseness: its defaults, abs and max-normalised
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=np.zeros(len(maps), dtype=int),
                    a_batch=maps[:, None].numpy().copy(), s_batch=mask[:, None].numpy().astype(np.float32))
    expected = M.sparseness(maps) if ours is None else ours(maps, mask)
    np.testing.assert_allclose(np.asarray(theirs, dtype=np.float64), expected.double().numpy(), atol=1e-6)
    if name == "PointingGame":
        assert 0 < expected.sum() < len(expected)   # both hits and misses were compared


@pytest.mark.parametrize("normalisation, removal", [(IDENTITY, "zero"), ({}, "mean")])
def test_perturbation_curve_agrees_with_quantus_pixel_flipping(quantus, normalisation, removal):
    """Quantus's PixelFlipping with one pixel (3 channel values, the map broadcast over channels) per step
    and a constant baseline 0 in the model's input space flips the pixels in the same order; its curve after
    k = 12, 24, ..., 108 of the 120 pixels is vitx's positive perturbation curve at 10%, ..., 90%, with
    "zero" removal on a model fed [0, 1] images and with "mean" removal on ImageNet-normalised input."""
    mask, maps, region = quantus_inputs()
    model = region_model((12, 10), region, patch=(3, 5), **(normalisation or {"mean": (0.485, 0.456, 0.406),
                                                                             "std": (0.229, 0.224, 0.225)}))
    x = model.normalize(rand(len(maps), 3, 12, 10, seed=9, low=0.05))
    y = np.array([0, 1] * (len(maps) // 2))
    metric = quantus.PixelFlipping(features_in_step=3, perturb_baseline=0.0, normalise=False, disable_warnings=True)
    curve = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y, a_batch=maps[:, None].numpy(),
                              softmax=True, channel_first=True))
    ours = M.perturbation_test(model, x, torch.as_tensor(y), maps, removal=removal)["probability"]
    np.testing.assert_allclose(curve[:, 11:108:12], ours[:, 1:].numpy(), atol=1e-6)
    assert np.ptp(curve[:, 11:108:12]) > 0.1          # the curves move


# ---------------------------------------------------------------------------------------------- perturbation

def changed_pixels(perturbed, x):
    return (perturbed != x).any(1)                 # (B, H, W)


@pytest.mark.parametrize("order", ["positive", "negative"])
def test_perturbation_one_forward_per_step_unperturbed_first_exact_fractions(order):
    model = region_model()
    x = rand(3, 3, 16, 16, seed=1, low=0.05)       # no pixel is already 0
    maps = rand(3, 16, 16, seed=2, low=-1)
    targets = torch.tensor([0, 1, 0])
    model.net.record = True
    out = M.perturbation_test(model, x, targets, maps, order=order)
    model.net.record = False
    assert model.net.calls == 10 and [t.shape[0] for t in model.net.inputs] == [3] * 10
    torch.testing.assert_close(out["fractions"], torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))
    assert torch.equal(model.net.inputs[0], x)
    with torch.no_grad():
        probability = model(x).softmax(1)[torch.arange(3), targets]
    torch.testing.assert_close(out["probability"][:, 0], probability)
    ranked = maps.flatten(1).argsort(1, descending=order == "positive")
    for f, seen in zip(out["fractions"].tolist(), model.net.inputs):
        k = int(f * 256 + 1e-9)
        changed = changed_pixels(seen, x).flatten(1)
        assert changed.sum(1).tolist() == [k] * 3
        expected = torch.zeros_like(changed).scatter_(1, ranked[:, :k], True)
        assert torch.equal(changed, expected)
        assert seen.permute(0, 2, 3, 1)[changed.view(3, 16, 16)].eq(0).all()   # "zero": black in [0, 1]
    assert out["correct"].shape == out["probability"].shape == (3, 10) and out["auc"].shape == (3,)
    model.net.calls = 0
    M.perturbation_test(model, x, targets, maps, order=order, batch_size=2)
    assert model.net.calls == 20                   # chunks bound memory only: two per step here


@pytest.mark.parametrize("removal", ["zero", "mean", "blur"])
def test_perturbation_removal_values(removal):
    model = region_model(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = model.normalize(rand(2, 3, 16, 16, seed=1, low=0.05))
    maps = rand(2, 16, 16, seed=2)
    model.net.record = True
    M.perturbation_test(model, x, [0, 0], maps, removal=removal, fractions=(0.5,), blur_sigma=2.0)
    seen = model.net.inputs[-1]
    changed = changed_pixels(seen, x)
    assert changed.flatten(1).sum(1).tolist() == [128, 128]
    expected = {"zero": model.normalize(torch.zeros(1, 3, 1, 1)).expand_as(x), "mean": torch.zeros_like(x),
                "blur": M.gaussian_blur(x, 2.0)}[removal]
    pick = changed[:, None].expand_as(x)
    torch.testing.assert_close(seen[pick], expected[pick])


def test_gaussian_blur_is_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter
    images = rand(2, 3, 16, 16, seed=4)
    for sigma in (1.5, 5.0):
        radius = math.ceil(sigma)
        expected = np.stack([[gaussian_filter(c, sigma, mode="nearest", truncate=radius / sigma) for c in image]
                             for image in images.double().numpy()])
        np.testing.assert_allclose(M.gaussian_blur(images.double(), sigma).numpy(), expected, atol=1e-10)


def test_perturbation_oracle_best_random_middle_inverted_worst():
    model = region_model()
    x = rand(8, 3, 16, 16, seed=1, low=0.5)
    mask = region_mask(8)
    oracle = mask.float() + 0.01 * rand(8, 16, 16, seed=2)
    targets = torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        assert model(x).argmax(1).eq(0).all()
    runs = {name: {order: M.perturbation_test(model, x, targets, m, order=order) for order in ("positive", "negative")}
            for name, m in (("oracle", oracle), ("random", rand(8, 16, 16, seed=3)), ("inverted", -oracle))}
    for key in ("auc", "probability_auc"):
        pos = {name: r["positive"][key].mean() for name, r in runs.items()}
        neg = {name: r["negative"][key].mean() for name, r in runs.items()}
        assert pos["oracle"] < pos["random"] < pos["inverted"], key    # positive: lower is better
        assert neg["oracle"] > neg["random"] > neg["inverted"], key    # negative: higher is better
    # removing 10% (25 pixels, all inside the 64-pixel region) already flips the oracle's images
    assert runs["oracle"]["positive"]["correct"].tolist() == [[1.0] + [0.0] * 9] * 8
    assert runs["oracle"]["positive"]["auc"].tolist() == pytest.approx([5.0] * 8)


def test_auc_is_the_trapezoid_and_dataset_auc_is_the_mean_in_percent():
    correct = torch.tensor([[1.0, 1, 0, 0, 0, 0, 0, 0, 0, 0], [1.0] * 10])
    torch.testing.assert_close(M.auc(correct), torch.tensor([0.15, 0.9]))
    assert M.dataset_auc(correct) == pytest.approx(100 * (0.15 + 0.9) / 2)
    with pytest.raises(VitxError, match="needs 3 abscissae"):
        M.auc(torch.ones(2, 3))


def test_token_removal_masks_the_lowest_or_highest_ranked_patch_tokens(vit):
    x = rand(2, 3, 16, 16, seed=1, low=-1)
    grid = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]).float()
    maps = grid.view(2, 4, 1, 4, 1).expand(2, 4, 4, 4, 4).reshape(2, 16, 16)   # constant on each 4x4 patch
    targets = torch.tensor([0, 2])
    for order in ("positive", "negative"):
        out = M.perturbation_test(vit, x, targets, maps, order=order, removal="tokens", fractions=(0.3, 0.6))
        with torch.no_grad():
            torch.testing.assert_close(out["probability"][:, 0], vit(x).softmax(1)[torch.arange(2), targets])
            for f, probability in zip(out["fractions"][1:].tolist(), out["probability"][:, 1:].T):
                k = int(f * 16 + 1e-9)
                ranked = grid.argsort(1, descending=order == "positive")
                keep = torch.ones(2, 17, dtype=torch.bool)
                keep[torch.arange(2)[:, None], 1 + ranked[:, :k]] = False       # the class token stays
                with vitx.trace(vit, key_mask=keep):
                    expected = vit(x).softmax(1)[torch.arange(2), targets]
                torch.testing.assert_close(probability, expected)
                wrong = torch.ones(2, 17, dtype=torch.bool)
                wrong[torch.arange(2)[:, None], 1 + ranked[:, 16 - k:]] = False
                with vitx.trace(vit, key_mask=wrong):
                    assert not torch.allclose(vit(x).softmax(1)[torch.arange(2), targets], expected)


def test_insertion_deletion_steps_endpoints_and_ordering():
    model = region_model()
    x = rand(4, 3, 16, 16, seed=1, low=0.5)
    mask = region_mask(4)
    oracle = mask.float() + 0.01 * rand(4, 16, 16, seed=2)
    targets = torch.zeros(4, dtype=torch.long)
    model.net.record = True
    out = M.insertion_deletion(model, x, targets, oracle)
    model.net.record = False
    # default: H = 16 steps of W = 16 pixels, one forward per point over 4 deletion + 4 insertion images
    assert model.net.calls == 17 and all(t.shape[0] == 8 for t in model.net.inputs)
    assert out["deletion"].shape == out["insertion"].shape == (4, 17)
    torch.testing.assert_close(out["fractions"], torch.arange(17.0) / 16)
    blurred = M.gaussian_blur(x, 5.0)
    for i, seen in enumerate(model.net.inputs):
        assert changed_pixels(seen[:4], x).flatten(1).sum(1).tolist() == [16 * i] * 4
        assert changed_pixels(seen[4:], blurred).flatten(1).sum(1).tolist() == [16 * i] * 4
    with torch.no_grad():
        p = lambda images: model(images).softmax(1)[:, 0]   # noqa: E731
        torch.testing.assert_close(out["deletion"][:, 0], p(x))
        torch.testing.assert_close(out["insertion"][:, -1], p(x))
        torch.testing.assert_close(out["deletion"][:, -1], p(torch.zeros_like(x)))
        torch.testing.assert_close(out["insertion"][:, 0], p(blurred))
    torch.testing.assert_close(out["deletion_auc"], torch.trapezoid(out["deletion"], out["fractions"]))
    # a checkerboard in the region is the evidence: the blurred start image has none
    model = region_model(net=Region((16, 16), (slice(4, 12), slice(4, 12)), checker=True, offset=0.25))
    board = ((torch.arange(16)[:, None] + torch.arange(16)) % 2 == 0).float()
    x = torch.where(mask[:, None], board, 0.5).expand(4, 3, 16, 16)
    with torch.no_grad():
        assert (model(x).argmax(1) == 0).all() and (model(M.gaussian_blur(x, 5.0)).argmax(1) == 1).all()
    worst = M.insertion_deletion(model, x, targets, -oracle, steps=8)
    best = M.insertion_deletion(model, x, targets, oracle, steps=8)
    assert best["fractions"].tolist() == [i / 8 for i in range(9)]
    assert (best["insertion_auc"] > 0.5).all() and (worst["insertion_auc"] < 0.5).all()
    assert (best["insertion_auc"] > worst["insertion_auc"]).all()
    assert (best["deletion_auc"] < worst["deletion_auc"]).all()


# ---------------------------------------------------------------------------------------------- sanity

def test_spearman_and_ssim_agree_with_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity
    a = torch.randint(0, 5, (3, 9, 11), generator=torch.Generator().manual_seed(0)).float()   # many ties
    b = a + rand(3, 9, 11, seed=1, high=3)
    rho, s = M.spearman(a, b), M.ssim(a, b)
    for i in range(3):
        assert rho[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten())[0], abs=1e-10)
        scaled = [(m - m.min()) / (m.max() - m.min()) for m in (a[i].double().numpy(), b[i].double().numpy())]
        assert s[i].item() == pytest.approx(structural_similarity(*scaled, data_range=1), abs=1e-10)
    assert M.spearman(a, a).tolist() == pytest.approx([1.0] * 3) and M.ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    assert math.isnan(M.spearman(torch.ones(1, 8, 8), a[:1, :8, :8]).item())


def test_cascade_randomises_blocks_from_the_top_on_a_copy(vit):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    steps = []
    for count, copied in M.cascade(vit, seed=0):
        assert copied.net is not vit.net
        state = copied.state_dict()
        steps.append(count)
        for key, value in before.items():
            block = int(key.split(".")[2]) if key.startswith("net.blocks.") else None
            randomised = block is not None and block >= 2 - count
            changed = not torch.equal(state[key], value)
            if randomised and not key.endswith(("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")):
                assert changed, key
            elif not randomised:
                assert not changed, key
    assert steps == [1, 2]
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())


def test_randomization_leaves_the_model_alone_and_matches_scipy(vit):
    from scipy.stats import spearmanr
    x = rand(3, 3, 16, 16, seed=1, low=-1)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    out = M.randomization(vit, x, torch.tensor([0, 1, 2]), "raw-attention", keep_maps=True)
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())
    assert out["blocks"].tolist() == [1, 2] and len(vit.adapter.blocks()) == 2
    assert out["spearman"].shape == out["ssim"].shape == (3, 2) and out["maps"].shape == (3, 3, 16, 16)
    torch.testing.assert_close(out["maps"][:, 0], vitx.explain(vit, x, "raw-attention", target=[0, 1, 2]).maps)
    for i in range(3):
        for step in range(2):
            expected = spearmanr(out["maps"][i, 0].flatten(), out["maps"][i, step + 1].flatten())[0]
            assert out["spearman"][i, step].item() == pytest.approx(expected, abs=1e-9)
    assert torch.equal(out["randomization_spearman"], out["spearman"][:, -1])
    assert (out["spearman"] < 0.99).all()                    # the random last block changed every map
    again = M.randomization(vit, x, torch.tensor([0, 1, 2]), "raw-attention")
    torch.testing.assert_close(again["spearman"], out["spearman"])                     # seeded


# ---------------------------------------------------------------------------------------------- registry

def test_registry_names_the_leaderboard_and_computes_every_score(vit):
    assert set(M.METRICS) == LEADERBOARD
    lower = {name for name, row in M.METRICS.items() if not row.higher_is_better}
    assert lower == {"perturbation_positive_auc", "perturbation_positive_auc_tokens", "deletion_auc",
                     "randomization_spearman"}
    assert M.METRICS["class_sensitivity"].needs == {"multi_masks"}
    assert M.METRICS["randomization_spearman"].needs == {"model", "method"}
    assert M.METRICS["sparseness"].needs == frozenset()
    x = rand(2, 3, 16, 16, seed=1, low=-1)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 2:9, 3:10] = True
    multi = torch.stack([masks, ~masks, torch.zeros_like(masks)], 1)
    targets = torch.tensor([0, 1])
    maps = vitx.explain(vit, x, "raw-attention", target=targets).maps
    scores = M.compute(sorted(LEADERBOARD), model=vit, x=x, targets=targets, maps=maps, masks=masks,
                       multi_masks=multi, method="raw-attention")
    assert set(scores) == LEADERBOARD and all(v.shape == (2,) for v in scores.values())
    torch.testing.assert_close(scores["perturbation_negative_auc"],
                               M.perturbation_test(vit, x, targets, maps, order="negative")["auc"])
    torch.testing.assert_close(scores["perturbation_positive_auc_tokens"],
                               M.perturbation_test(vit, x, targets, maps, removal="tokens")["auc"])
    torch.testing.assert_close(scores["miou"], M.segmentation(maps, masks)["miou"])
    assert [row["name"] for row in M.metrics()] == list(M.METRICS)
