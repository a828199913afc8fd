"""occlusion, rise, kernel-shap and vit-cx: hand-computed cases, exact Shapley values over all coalitions as the
oracle of KernelSHAP (efficiency, convergence on 2x2 and 3x3 patch grids), captum's KernelShap and Occlusion on
the same tiny ViTs, features and baselines, the attention-masking value function against a forward that drops
the removed tokens, and vit-cx's clustering and scoring on hand-built feature maps (batch invariance of every
registered method is in test_methods.py)."""
import math

import pytest
import torch
from captum.attr import KernelShap, Occlusion
from sklearn.cluster import AgglomerativeClustering

import vitx
from reference import close as close_tensors, images, jitter
from vitx.batch import Batch
from vitx.layout import TokenLayout
from vitx.methods.gradient import baseline_for
from vitx.methods.perturbation import coalition_values, occlusion_windows, rise_grids, rise_masks
from vitx.methods.vitcx import cluster_masks, coverage_average, feature_masks
from vitx.models import ViTConfig, VisionTransformer
from vitx.shapley import all_coalitions, constrained_least_squares, exact_shapley, sample_coalitions


def tiny(grid, **kw):
    """A jittered 3-block, 2-head ViT on a grid x grid patch grid of 8x8 patches, 5 classes."""
    torch.manual_seed(0)
    return vitx.load_model(jitter(VisionTransformer(ViTConfig(image_size=8 * grid, patch_size=8, embed_dim=32, depth=3,
                                                              num_heads=2, num_classes=5, **kw))))


@pytest.fixture(scope="module")
def model():
    return tiny(4)


@pytest.fixture(scope="module")
def x():
    return images(3, 3, 32, 32)


def batch_of(model, x, targets=None):
    return Batch(model, x, model.layout(x), targets)


def close(actual, expected, rtol=1e-4):
    close_tensors(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol)


def token_map(model, x, method, target=None, **params):
    return vitx.explain(model, x, method, target, normalize=False, **params).token_maps


def kept_forward(net, x, kept):
    """The ViT's logits with only the class token and the patches ``kept`` (indices) in the sequence."""
    tokens = net.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([net.cls_token.expand(len(x), -1, -1), tokens], 1) + net.pos_embed
    tokens = net.blocks(tokens[:, [0] + [1 + j for j in kept]])
    return net.head(net.norm(tokens)[:, 0])


# --- Shapley values: exact, kernel sampling, the constrained regression -----------------------------

def test_exact_shapley_by_hand():
    # v(S) = 1·[0∈S] + 2·[1∈S] + 4·[0,1 ∈ S] + 6·[0,2 ∈ S]: each pair's bonus is split between its players,
    # φ = (1 + 2 + 3, 2 + 2, 3) = (6, 4, 3); Σφ = 13 = v(N) − v(∅).
    z = all_coalitions(3).float()
    v = z[:, 0] + 2 * z[:, 1] + 4 * z[:, 0] * z[:, 1] + 6 * z[:, 0] * z[:, 2]
    close(exact_shapley(v[:, None]), [[6.0, 4.0, 3.0]], rtol=1e-6)
    # Majority of three players (v = 1 when |S| ≥ 2): symmetric, so 1/3 each; on two images at once.
    majority = (z.sum(1) >= 2).float()
    close(exact_shapley(torch.stack([majority, 2 * majority], 1)), [[1 / 3] * 3, [2 / 3] * 3], rtol=1e-6)
    assert all_coalitions(3)[6].tolist() == [False, True, True]  # bit i of k is player i


def test_kernel_weighted_regression_over_all_coalitions_is_exact():
    """Lundberg & Lee's Theorem 2: the regression weighted by π(S) = (P−1)/(C(P,|S|)|S|(P−|S|)) over every
    coalition but ∅ and N, under the efficiency constraint, gives the Shapley values of any game."""
    P = 6
    z = all_coalitions(P)
    v = torch.randn(2 ** P, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inner = slice(1, 2 ** P - 1)                       # row 0 is ∅, the last row N
    size = z[inner].sum(1).double()
    kernel = (P - 1) / (torch.tensor([math.comb(P, int(s)) for s in size]) * size * (P - size))
    phi = constrained_least_squares(z[inner], v[inner], v[0], v[-1], weights=kernel)
    close(phi, exact_shapley(v), rtol=1e-9)
    # Unweighted, the result differs, but the constraint still holds exactly.
    unweighted = constrained_least_squares(z[inner], v[inner], v[0], v[-1])
    assert (unweighted - exact_shapley(v)).abs().max() > 1e-2
    close(unweighted.sum(1), v[-1] - v[0], rtol=1e-12)


def test_sampled_coalitions_follow_the_shapley_kernel_in_pairs():
    P, n = 7, 40000
    z = sample_coalitions(P, n, torch.Generator().manual_seed(0))
    assert z.shape == (n, P) and z.dtype == torch.bool
    assert torch.equal(z[n // 2:], ~z[: n // 2])                       # complements
    size = z.sum(1)
    assert size.min() >= 1 and size.max() <= P - 1
    sizes = torch.arange(1, P).double()
    expected = 1 / (sizes * (P - sizes))
    frequency = torch.bincount(size, minlength=P)[1:].double() / n
    close(frequency, expected / expected.sum(), rtol=0.03)
    # Within a size, every subset is equally likely: each player alone in 1/P of the one-player coalitions.
    half = z[: n // 2]
    singles = half[half.sum(1) == 1].double()
    close(singles.mean(0), torch.full((P,), 1 / P, dtype=torch.float64), rtol=0.1)
    assert len(sample_coalitions(P, 5, torch.Generator())) == 6         # rounded up to pairs


# --- the value function ----------------------------------------------------------------------------

def test_baseline_removal_by_hand(model, x):
    targets = torch.tensor([0, 3, 1])
    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[0, [1, 6]] = True                              # patch 1: rows 0-7, cols 8-15; patch 6: rows 8-15, cols 16-23
    expected = model.normalize(torch.full_like(x, 0.5))             # grey 0.5 in image space
    for r, c in ((0, 8), (8, 16)):
        expected[..., r:r + 8, c:c + 8] = x[..., r:r + 8, c:c + 8]
    with torch.no_grad():
        logits = model(expected)
        values = coalition_values(batch_of(model, x, targets), keep, baseline=0.5)
        probabilities = coalition_values(batch_of(model, x, targets), keep, baseline=0.5, score="probability")
    close(values[0], logits.gather(1, targets[:, None])[:, 0], rtol=1e-5)
    close(probabilities[0], logits.softmax(1).gather(1, targets[:, None])[:, 0], rtol=1e-5)


@pytest.mark.parametrize("kept", [[], [5], [0, 3, 9, 15], list(range(16))])
def test_attention_removal_drops_the_removed_tokens(model, x, kept):
    """Masking the removed patches as keys in every block gives the class token what a forward without them gives."""
    targets = torch.tensor([4, 2, 0])
    keep = torch.zeros(16, dtype=torch.bool)
    keep[kept] = True
    per_image = torch.stack([keep, ~keep, keep])[None]          # (1, B, P): a coalition per image
    with torch.no_grad():
        values = coalition_values(batch_of(model, x, targets), per_image, removal="attention")
        expected = torch.stack([kept_forward(model.net, x[i:i + 1], torch.nonzero(row).flatten().tolist())[0, t]
                                for i, (row, t) in enumerate(zip(per_image[0], targets))])
    close(values[0], expected, rtol=1e-5)


def test_attention_removal_needs_a_class_token(x):
    pooled = tiny(4, class_token=False, global_pool="avg")
    with pytest.raises(vitx.VitxError, match="class token"):
        vitx.explain(pooled, x, "kernel-shap", removal="attention", samples=4)
    vitx.explain(pooled, x, "kernel-shap", samples=4)           # baseline removal applies


# --- kernel-shap -----------------------------------------------------------------------------------

@pytest.mark.parametrize("removal", ["baseline", "attention"])
def test_kernel_shap_efficiency(model, x, removal):
    """Σ_i φ_i = v(N) − v(∅), v(∅) computed here without vitx: the baseline image, or the class token alone."""
    with torch.no_grad():
        gaps = model(x) - (model(torch.zeros_like(x)) if removal == "baseline" else kept_forward(model.net, x, []))
    targets = gaps.abs().argmax(1)                      # a sizeable gap for each image
    gap = gaps.gather(1, targets[:, None])[:, 0]
    assert gap.abs().min() > 0.3
    phi = token_map(model, x, "kernel-shap", targets, removal=removal, samples=64)
    close(phi.sum((1, 2)), gap, rtol=1e-4)


def exact_values(model, x, removal):
    """Predicted classes and the exact Shapley values (B, gh, gw) of the patches, from v on every coalition."""
    batch = batch_of(model, x)
    layout = batch.layout
    with torch.no_grad():
        values = coalition_values(batch, all_coalitions(layout.num_patches), removal)
    return batch.targets, layout.to_grid(exact_shapley(values))


@pytest.mark.parametrize("removal", ["baseline", "attention"])
@pytest.mark.parametrize("grid", [2, 3])
def test_kernel_shap_converges_to_exact_shapley_values(grid, removal):
    model, x = tiny(grid), images(2, 3, 8 * grid, 8 * grid)
    targets, exact = exact_values(model, x, removal)
    scale = exact.abs().max()
    errors = [float((token_map(model, x, "kernel-shap", targets, removal=removal, samples=n, seed=1) - exact)
                    .abs().max() / scale) for n in (8, 64, 512, 8192)]
    assert errors[0] > 0.1, errors                      # a few coalitions are far off: the test can see an error
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.02, errors


@pytest.mark.filterwarnings("ignore:You are providing multiple inputs")
@pytest.mark.parametrize("grid,samples,tolerance", [(2, 10000, 0.05), (3, 4000, 0.03)])
def test_kernel_shap_agrees_with_captum(grid, samples, tolerance):
    """captum's KernelShap (kernel sampling, unpaired, v(N) and v(∅) weighted 1e6 in place of the exact
    constraint) on the same model, patches as features and baseline, at equal evaluations: both near the exact
    values, and so near each other (captum converges more slowly: its error here is 3-10x ours)."""
    model, x = tiny(grid), images(2, 3, 8 * grid, 8 * grid)
    targets, exact = exact_values(model, x, "baseline")
    features = torch.arange(grid * grid).view(1, 1, grid, grid).repeat_interleave(8, 2).repeat_interleave(8, 3)
    torch.manual_seed(0)
    theirs = KernelShap(model).attribute(x, baselines=0.0, target=targets, feature_mask=features,
                                         n_samples=samples + 2, perturbations_per_eval=500)[:, 0, ::8, ::8]
    ours = token_map(model, x, "kernel-shap", targets, samples=samples)
    scale = float(exact.abs().max())
    assert (theirs - exact).abs().max() < tolerance * scale
    assert (ours - exact).abs().max() < tolerance / 3 * scale
    assert (ours - theirs).abs().max() < tolerance * scale


# --- occlusion -------------------------------------------------------------------------------------

def test_occlusion_windows_by_hand():
    # 4 patches, window 3, stride 2: ⌈(4 − 3)/2⌉ + 1 = 2 positions, [0, 3) and [2, 4) (cut by the edge).
    windows = occlusion_windows((4, 4), 3, 2)
    assert windows.shape == (4, 4, 4)
    close(windows.sum(0).float(), torch.tensor([1., 1, 2, 1])[:, None] * torch.tensor([1., 1, 2, 1])[None])
    assert windows[3].nonzero().tolist() == [[r, c] for r in (2, 3) for c in (2, 3)]
    # 3x5 patches, window 2, stride 2: rows [0, 2), [2, 3); columns [0, 2), [2, 4), [4, 5).
    windows = occlusion_windows((3, 5), 2, 2)
    assert windows.shape == (6, 3, 5) and torch.equal(windows.sum(0), torch.ones(3, 5, dtype=torch.long))
    assert windows[5].nonzero().tolist() == [[2, 4]]


@pytest.mark.parametrize("window,stride,baseline", [(2, 1, "zeros"), (3, 2, "black"), (1, 1, 0.5)])
def test_occlusion_matches_captum(model, x, window, stride, baseline):
    targets = torch.tensor([2, 0, 4])
    start = baseline_for(batch_of(model, x, targets), baseline)
    expected = Occlusion(model).attribute(x, sliding_window_shapes=(3, 8 * window, 8 * window),
                                          strides=(3, 8 * stride, 8 * stride), baselines=start, target=targets,
                                          perturbations_per_eval=4)
    assert torch.equal(expected, expected[:, :1, ::8, ::8].repeat_interleave(8, 2).repeat_interleave(8, 3)
                       .expand_as(expected))                                     # patch-aligned
    ours = token_map(model, x, "occlusion", targets, window=window, stride=stride, baseline=baseline,
                     internal_batch_size=5)
    close(ours, expected[:, 0, ::8, ::8], rtol=1e-5)


def test_occlusion_by_attention_is_the_mean_drop_of_its_windows(model, x):
    """Window 2, stride 2: four disjoint windows, each patch's value the drop when its window's tokens are gone."""
    targets = torch.tensor([3, 3, 1])
    with torch.no_grad():
        full = model(x).gather(1, targets[:, None])[:, 0]
        drops = []
        for r0 in (0, 2):
            for c0 in (0, 2):
                kept = [r * 4 + c for r in range(4) for c in range(4) if not (r0 <= r < r0 + 2 and c0 <= c < c0 + 2)]
                drops.append(full - kept_forward(model.net, x, kept).gather(1, targets[:, None])[:, 0])
    expected = torch.stack(drops, 1).view(3, 2, 2).repeat_interleave(2, 1).repeat_interleave(2, 2)
    close(token_map(model, x, "occlusion", targets, window=2, stride=2, removal="attention"), expected, rtol=1e-5)


# --- rise ------------------------------------------------------------------------------------------

def test_rise_mask_rendering_by_hand():
    # Grid columns (1, 0), cells of 2 px: upsampled to 6 px (factor 3) with half-pixel centres, column j reads
    # the grid at (j + 0.5)/3 − 0.5 (clamped): 1, 1, 2/3, 1/3, 0, 0; shifted by one column and cropped to 4.
    grids = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    mask = rise_masks(grids, torch.tensor([[0, 1]]), (2, 2), (4, 4))
    close(mask[0], torch.tensor([1, 2 / 3, 1 / 3, 0]).expand(4, 4), rtol=1e-6)
    mask = rise_masks(grids.transpose(1, 2), torch.tensor([[2, 0]]), (2, 2), (4, 4))
    close(mask[0], torch.tensor([2 / 3, 1 / 3, 0, 0])[:, None].expand(4, 4), rtol=1e-6)


def test_rise_masks_keep_cells_with_probability_keep(model):
    layout = model.layout(torch.zeros(1, 3, 32, 32))
    grids, shifts = rise_grids(4000, layout, 2, 0.3, torch.Generator().manual_seed(0))
    assert grids.shape == (4000, 2, 2) and shifts.shape == (4000, 2) and 0 <= shifts.min() and shifts.max() < 16
    masks = rise_masks(grids, shifts, (16, 16), (32, 32))
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6
    close(masks.mean(0), torch.full((32, 32), 0.3), rtol=0.05)


def test_rise_is_its_formula(model, x):
    """S = 1/(N p) Σ_k softmax(y(x' + M_k (x − x')))_t M_k, the masks from the seed, computed here image by image."""
    targets = torch.tensor([0, 1, 2])
    grids, shifts = rise_grids(30, model.layout(x), 1, 0.5, torch.Generator().manual_seed(3))
    masks = rise_masks(grids, shifts, (8, 8), (32, 32))
    grey = model.normalize(torch.full_like(x[:1], 0.5))
    with torch.no_grad():
        expected = torch.stack([
            torch.einsum("k,khw->hw", model(grey + masks[:, None] * (x[i] - grey)).softmax(1)[:, t], masks) / 15
            for i, t in enumerate(targets)])
    maps = vitx.explain(model, x, "rise", targets, normalize=False, masks=30, cell=1, seed=3, baseline=0.5,
                        internal_batch_size=7).maps
    close(maps, expected, rtol=1e-5)
    # Every cell kept: each mask is 1 everywhere, and the map is the target probability.
    constant = vitx.explain(model, x, "rise", targets, normalize=False, masks=5, keep=1.0).maps
    probability = model(x).softmax(1).gather(1, targets[:, None])[:, 0]
    close(constant, probability[:, None, None].expand(3, 32, 32).detach(), rtol=1e-5)


# --- vit-cx ----------------------------------------------------------------------------------------

HAND_MASKS = torch.tensor([[1.0, 0.0, 0.0, 0.0],      # 0 ┐ cosine distance 1 − 1/√1.0025 = 0.00125
                           [1.0, 0.05, 0.0, 0.0],     # 1 ┘
                           [0.0, 0.0, 1.0, 1.0],      # 2 ┐ 1 − 1.9/(√2·√1.81) = 0.00139
                           [0.0, 0.0, 1.0, 0.9],      # 3 ┘
                           [0.0, 1.0, 0.0, 0.0]])     # 4: distance 0.95 or more from every other


def test_vit_cx_masks_from_hand_built_feature_maps():
    """Each mask is its feature map of the layer-normalised patch tokens, min-max scaled (a 2x2 grid of one-pixel
    patches, so no upsampling). The rows below have mean 0 and spread √5; the tokens given shift one and double
    another, which the normalisation undoes."""
    layout = TokenLayout(num_prefix=1, patch_size=(1, 1), grid=(2, 2))
    rows = torch.tensor([[3.0, -3.0, 1.0, -1.0],
                         [-3.0, 3.0, 1.0, -1.0],
                         [1.0, -1.0, 3.0, -3.0],
                         [-1.0, 1.0, -3.0, 3.0]])
    patches = rows * torch.tensor([[1.0], [1.0], [1.0], [2.0]]) + torch.tensor([[0.0], [0.0], [5.0], [0.0]])
    tokens = torch.cat([torch.randn(1, 4), patches])                   # the class token is left out
    masks = feature_masks(tokens, layout, (2, 2))
    expected = (rows.T - rows.T.amin(1, keepdim=True)) / 6             # feature d over the four patches
    close(masks, expected.view(4, 2, 2), rtol=1e-5)


def test_vit_cx_clustering_by_hand():
    masks = HAND_MASKS.view(5, 2, 2)
    clusters = cluster_masks(masks, 0.1)
    # Clusters {0, 1}, {2, 3}, {4}; sums (2, .05, 0, 0), (0, 0, 2, 1.9), (0, 1, 0, 0), min-max scaled.
    found = sorted(clusters.flatten(1).tolist())
    close(torch.tensor(found), [[0, 0, 1, 0.95], [0, 1, 0, 0], [1, 0.025, 0, 0]], rtol=1e-6)
    # Below both pairs' distances nothing merges; at 0.0013 only the first pair does.
    assert len(cluster_masks(masks, 0.001)) == 5 and len(cluster_masks(masks, 0.0013)) == 4


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.3])
def test_vit_cx_clusters_as_sklearn(model, x, threshold):
    """The clusters of a tiny ViT's feature maps are scikit-learn's AgglomerativeClustering (cosine, complete)."""
    with torch.no_grad(), vitx.trace(model, attentions=False, tokens=False, inputs=True) as tr:
        model(x[:1])
    masks = feature_masks(tr.inputs[-1][0], model.layout(x), (32, 32)).flatten(1)
    labels = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                     linkage="complete").fit(masks.double().numpy()).labels_
    sums = torch.stack([masks[torch.from_numpy(labels == k)].sum(0) for k in range(labels.max() + 1)])
    expected = (sums - sums.amin(1, keepdim=True)) / (sums.amax(1, keepdim=True) - sums.amin(1, keepdim=True))
    clusters = cluster_masks(masks.view(-1, 32, 32), threshold).flatten(1)
    assert 1 < len(clusters) < len(masks) and len(clusters) == len(expected)
    close(clusters[clusters.sum(1).argsort()], expected[expected.sum(1).argsort()], rtol=1e-5)


def test_vit_cx_coverage_average_by_hand():
    masks = torch.tensor([[[1.0, 0.5], [0.0, 0.0]],
                          [[1.0, 0.5], [0.25, 0.0]]])
    # (1·2 + 1·6)/2 = 4;  (0.5·2 + 0.5·6)/1 = 4;  (0.25·6)/0.25 = 6;  uncovered: 0.
    close(coverage_average(masks, torch.tensor([2.0, 6.0])), [[4.0, 4.0], [6.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_vit_cx_is_its_formula(model, x, noise):
    """S = Σ_k s_k M_k / Σ_k M_k, s_k = p_t(x M_k + ε_k (1 − M_k)) − p_t(x + ε_k (1 − M_k)) + p_t(x), the
    masks from the tokens entering block 1 and ε_k drawn mask by mask from the seed, image by image here."""
    targets = torch.tensor([3, 1, 0])
    with torch.no_grad(), vitx.trace(model, attentions=False, tokens=False, inputs=True) as tr:
        probabilities = model(x).softmax(1)
    expected = []
    for i, t in enumerate(targets):
        masks = cluster_masks(feature_masks(tr.inputs[1][i], model.layout(x), (32, 32)), 0.2)[:, None]
        generator = torch.Generator().manual_seed(5)
        eps = torch.cat([torch.randn(1, 3, 32, 32, generator=generator) for _ in masks]) * noise * (1 - masks)
        with torch.no_grad():
            scores = (model(x[i] * masks + eps).softmax(1)[:, t] - model(x[i] + eps).softmax(1)[:, t]
                      + probabilities[i, t])
        expected.append((scores[:, None, None] * masks[:, 0]).sum(0) / masks[:, 0].sum(0))
    maps = vitx.explain(model, x, "vit-cx", targets, normalize=False, block=1, distance_threshold=0.2, noise=noise,
                        seed=5, internal_batch_size=9).maps
    close(maps, torch.stack(expected), rtol=1e-5)


# --- parameters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,params,match", [
    ("occlusion", {"window": 5}, "window"),
    ("occlusion", {"window": 2, "stride": 3}, "stride"),
    ("occlusion", {"removal": "blur"}, "removal"),
    ("occlusion", {"baseline": "grey"}, "baseline"),
    ("rise", {"masks": 0}, "masks"),
    ("rise", {"keep": 0.0}, "keep"),
    ("rise", {"cell": 0}, "cell"),
    ("rise", {"score": "prob"}, "score"),
    ("kernel-shap", {"samples": 1}, "samples"),
    ("kernel-shap", {"score": "softmax"}, "score"),
    ("kernel-shap", {"internal_batch_size": 0}, "internal_batch_size"),
    ("vit-cx", {"block": 3}, "block"),
    ("vit-cx", {"distance_threshold": 0.0}, "distance_threshold"),
    ("vit-cx", {"noise": -1.0}, "noise"),
])
def test_bad_parameters_are_vitx_errors(model, x, method, params, match):
    with pytest.raises(vitx.VitxError, match=match):
        vitx.explain(model, x, method, **params)
