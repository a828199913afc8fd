"""ViT-NeT (issue 18): the neural tree decoder on a hand-built case, the hard path, the zoo model's accuracy, the
method `vit-net` batched and refused on a model without a tree, and its pointing game and energy on fresh images."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import vitx
from vitx.data import shapes
from vitx.evaluate import evaluate
from vitx.models import create_model

SEED = 20_000


def hand_built_tree():
    """Depth 2, 2-dimensional features, 2 patches, 4 classes; every prototype at the origin and each node's stream
    set by hand, so that node i's best patch is at distance ln(1/s_i): s = 0.8, 0.3, 0.6."""
    net = create_model("vitnet_shapes", tree_depth=2, proto_dim=2, num_classes=4)
    tree = net.tree
    with torch.no_grad():
        tree.prototypes.zero_()
    at = lambda *s: torch.tensor([[[math.log(1 / v), 0.0] for v in s]])                 # (1, patches, 2)
    leaves = [torch.tensor([[[1.0, 0.0], [0.0, 0.5]]]) * k for k in range(1, 5)]
    streams = [at(0.8, 0.5), at(0.3, 0.1), at(0.2, 0.6), *leaves]
    tree.streams = lambda patches: streams
    return net, tree


def test_routing_probabilities_by_hand():
    """π = (0.8·0.3, 0.8·0.7, 0.2·0.6, 0.2·0.4) over the leaves LL, LR, RL, RR: they sum to one; the similarity
    maps are exp(−d) per patch; the hard path goes left at the root (0.8 > 1/2), right at node 1 (0.3), to leaf 1."""
    net, tree = hand_built_tree()
    out = tree(torch.zeros(1, 2, 96), torch.zeros(1, 4))
    assert torch.allclose(out.similarity[0], torch.tensor([[0.8, 0.5], [0.3, 0.1], [0.2, 0.6]]))
    assert torch.allclose(out.left[0], torch.tensor([0.8, 0.3, 0.6]))
    assert torch.allclose(out.reach[0], torch.tensor([0.24, 0.56, 0.12, 0.08]))
    assert out.reach.sum().item() == pytest.approx(1.0)
    assert out.path.tolist() == [[0, 1]] and out.leaf.tolist() == [1]
    net.eval()
    hard = net.logits(out).exp()
    assert torch.allclose(hard, out.leaves[0, 1])
    net.routing = "soft"
    soft = net.logits(out).exp()
    assert torch.allclose(soft, (out.reach[0, :, None] * out.leaves[0]).sum(0))
    assert soft.sum().item() == pytest.approx(1.0)


def test_routing_sums_to_one_on_a_random_tree():
    torch.manual_seed(0)
    net = create_model("vitnet_shapes", tree_depth=4).eval()
    out = net.decode(net.forward_features(torch.randn(5, 3, 64, 64)))
    assert out.reach.shape == (5, 16) and torch.allclose(out.reach.sum(1), torch.ones(5))
    assert torch.allclose(out.leaves.sum(-1), torch.ones(5, 16))


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit-net")


@pytest.fixture(scope="module")
def test_images():
    return shapes(n=1000, seed=10_000)


def test_hard_path_takes_the_likelier_branch_at_every_node(model):
    """Each step of the hard path goes to the child of larger branch probability (max(p^L, 1 − p^L)), and the hard
    prediction is that leaf's distribution."""
    data = shapes(n=200, seed=SEED)
    net = model.net
    with torch.no_grad():
        out = net.decode(net.forward_features(model.normalize(data.images)))
        logits = model(model.normalize(data.images))
    nodes = torch.cat([out.path, out.leaf[:, None] + 2 ** net.cfg.tree_depth - 1], 1)
    for depth in range(net.cfg.tree_depth):
        node, child = nodes[:, depth], nodes[:, depth + 1]
        p = out.left.gather(1, node[:, None])[:, 0]
        branch = torch.stack([p, 1 - p], 1).argmax(1)                   # 0: left, 1: right (ties go right, as theirs)
        assert torch.equal(child, 2 * node + 1 + branch)
    assert torch.allclose(logits.exp(), out.leaves[torch.arange(200), out.leaf], atol=1e-6)


def test_accuracy_within_a_point_of_shapes_vit(model, test_images):
    """The hard path's accuracy on the 1,000 images of the cards (data seed 10,000) is within 1 point of
    shapes-vit's; measured 0.999 against 0.998 (soft routing 0.999; the card's figures)."""
    reference = vitx.load_model("shapes-vit")
    x = model.normalize(test_images.images)
    with torch.no_grad():
        accuracy = [torch.cat([m(x[i:i + 250]).argmax(-1) for i in range(0, 1000, 250)]).eq(test_images.labels)
                    .float().mean().item() for m in (model, reference)]
    assert accuracy[0] >= accuracy[1] - 0.01, accuracy


def test_method_batched_equals_one_at_a_time(model):
    x = model.normalize(shapes(n=4, seed=SEED).images)
    batched = vitx.explain(model, x, method="vit-net")
    for i in range(4):
        alone = vitx.explain(model, x[i:i + 1], method="vit-net")
        assert torch.allclose(alone.maps[0], batched.maps[i], atol=1e-5)
        assert alone.details["path"][0]["leaf"] == batched.details["path"][i]["leaf"]
        assert [n["node"] for n in alone.details["path"][0]["nodes"]] == \
               [n["node"] for n in batched.details["path"][i]["nodes"]]
        assert torch.allclose(alone.details["similarity"][0], batched.details["similarity"][i], atol=1e-5)


def test_method_reports_the_path_and_the_projected_prototypes(model):
    x = model.normalize(shapes(n=3, seed=SEED).images)
    exp = vitx.explain(model, x, method="vit-net")
    depth = model.net.cfg.tree_depth
    for path, maps in zip(exp.details["path"], exp.details["similarity"]):
        assert [n["depth"] for n in path["nodes"]] == list(range(depth)) and maps.shape == (depth, 8, 8)
        for node in path["nodes"]:
            assert node["branch"] == ("left" if node["p_left"] > 0.5 else "right")
            assert node["prototype"]["data_seed"] >= 1_000_000 and node["prototype"]["position"] is not None
            assert node["similarity"] == pytest.approx(node["p_left"])


def test_projected_prototype_is_its_training_patch(model):
    """A prototype after the projection is exactly the feature of the training patch it records: similarity 1."""
    net = model.net
    seed, image, patch = net.tree.prototype_source[0].tolist()
    drawn = shapes(n=image + 1, seed=seed).images[image:]
    with torch.no_grad():
        out = net.decode(net.forward_features(model.normalize(drawn)))
    assert out.similarity[0, 0, patch].item() == pytest.approx(1.0, abs=1e-4)


def test_method_refuses_a_model_without_a_tree():
    with pytest.raises(vitx.VitxError, match="has no tree"):
        vitx.explain(vitx.load_model("shapes-vit"), torch.zeros(1, 3, 64, 64), method="vit-net")


def test_other_methods_run_on_the_tree_model(model):
    exp = vitx.explain(model, model.normalize(shapes(n=2, seed=SEED).images), method="generic-attention")
    assert exp.maps.shape == (2, 64, 64) and torch.isfinite(exp.maps).all()


@pytest.fixture(scope="module")
def scored(model):
    data = shapes(n=200, seed=SEED)
    return evaluate(model, data, ["vit-net", "random"], metrics=["pointing_game_tolerant", "energy_pointing_game"],
                    batch_size=100, sanity_images=None).results["methods"]


def test_path_map_points_at_the_object(scored):
    """Gate: tolerant pointing game at least 0.75 on these 200 images; measured 0.821 (random map 0.220)."""
    assert scored["vit-net"]["pointing_game_tolerant"] >= 0.75, scored["vit-net"]


def test_path_map_puts_more_energy_in_the_mask_than_noise(scored):
    """Gate: energy in the mask above the random map's by more than 3 standard errors of the difference; measured
    0.132 against 0.094, 5.7 standard errors (a weak map: the tree routes on one bit, docs/inherent.md)."""
    ours, noise = scored["vit-net"], scored["random"]
    sem = (ours["energy_pointing_game_sem"] ** 2 + noise["energy_pointing_game_sem"] ** 2) ** 0.5
    assert (ours["energy_pointing_game"] - noise["energy_pointing_game"]) / sem > 3, scored


def test_projection_replaces_each_prototype_by_its_nearest_training_patch():
    """On a random tree: after the projection each prototype is the feature of the patch it records (similarity 1
    there), and no patch of the projection images was nearer to the old prototype than the one chosen."""
    from vitx.model import wrap
    from vitx.training.vitnet import project_prototypes
    torch.manual_seed(0)
    net = create_model("vitnet_shapes").eval()
    model = wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3)
    old = net.tree.prototypes.detach().clone()
    moved = project_prototypes(model, [7, 8], batch_size=3)
    images = {s: model.normalize(shapes(n=3, seed=s).images) for s in (7, 8)}
    with torch.no_grad():
        z = {s: torch.stack(net.tree.streams(net.forward_features(x)[:, 1:])[:7], 1) for s, x in images.items()}
    for i, (seed, image, patch) in enumerate(net.tree.prototype_source.tolist()):
        assert torch.allclose(net.tree.prototypes[i], z[seed][image, i, patch], atol=1e-5)
        nearest = min((f[:, i] - old[i]).norm(dim=-1).min().item() for f in z.values())
        assert moved[i].item() == pytest.approx(nearest, abs=1e-5)


def test_save_draws_the_path(model, tmp_path):
    """exp.save writes the path figure: the image and one column per node, two rows (patch above map)."""
    exp = vitx.explain(model, model.normalize(shapes(n=1, seed=SEED).images), method="vit-net")
    written = exp.save(tmp_path, names=["one"])
    figure = tmp_path / "one_vit-net_path.png"
    assert figure in written
    width, height = Image.open(figure).size
    assert (width, height) == (4 * (4 * 64 + 3 * 4), 4 * (2 * 64 + 4))
