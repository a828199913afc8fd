"""NesT: vitx's model against timm's with the same weights, loading timm-keyed files, the tap on blocked
attention, nest-cam's exactness, GradCAT's traversal on hand-built score maps and its scores against autograd,
and which methods apply to NesT."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models.nest import Nest as TimmNest

import vitx
from reference import jitter
from vitx.checkpoint import save_checkpoint
from vitx.cli import main
from vitx.data import CLASS_NAMES
from vitx.methods.nest import traverse
from vitx.models import ARCHITECTURES, create_model
from vitx.models.nest import blockify, deblockify

SHAPES = dict(img_size=64, patch_size=4, embed_dims=(64, 96, 128), num_heads=(2, 3, 4), depths=(2, 2, 2),
              num_classes=8)


@pytest.fixture(scope="module")
def pair():
    """(timm's NesT, vitx's NesT with its weights), the shapes configuration, weights jittered."""
    torch.manual_seed(0)
    theirs = jitter(TimmNest(**SHAPES), scale=0.05)
    ours = create_model("nest_shapes").eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["nest_tiny", "nest_small", "nest_base"])
def test_timm_keys_and_logits(arch, tmp_path):
    """timm's NesT-T/S/B with random weights: the same state_dict keys and shapes, and logits within 1e-4 through
    a timm-keyed safetensors file loaded with arch=."""
    import timm
    torch.manual_seed(0)
    theirs = timm.create_model(arch).eval()
    ours = create_model(arch)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    path = tmp_path / "nest.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    model = vitx.load_model(str(path), arch=arch)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), rtol=0, atol=1e-4)
    assert model.config.kind == "nest" and model.config.levels == ARCHITECTURES[arch].depths


def test_blockify_round_trip_and_order():
    x = torch.arange(2 * 8 * 8 * 3).float().view(2, 8, 8, 3)
    blocks = blockify(x, 4)
    assert blocks.shape == (2, 4, 16, 3)
    assert torch.equal(blocks[:, 1, 0], x[:, 0, 4]) and torch.equal(blocks[:, 2, 5], x[:, 5, 1])  # row-major blocks
    assert torch.equal(deblockify(blocks, 4), x)


def test_tap_records_blocked_attention_and_changes_nothing(pair, x):
    theirs, ours = pair
    for net in (theirs, ours):
        model = vitx.load_model(net)
        with torch.no_grad():
            plain = net(x)
            with vitx.trace(model) as tr:
                tapped = model(x)
        torch.testing.assert_close(tapped, plain, rtol=0, atol=1e-5)
        assert [a.shape for a in tr.attentions] == [(3, 2, 16, 16, 16)] * 2 + [(3, 3, 4, 16, 16)] * 2 + \
               [(3, 4, 1, 16, 16)] * 2
        assert [t.shape[1:3] for t in tr.tokens] == [(16, 16)] * 2 + [(4, 16)] * 2 + [(1, 16)] * 2
        torch.testing.assert_close(tr.attentions[0].sum(-1), torch.ones(3, 2, 16, 16))
        assert all("forward" not in m.__dict__ for m in net.modules())           # nothing left behind
    a, b = (vitx.load_model(n) for n in pair)
    with torch.no_grad(), vitx.trace(a) as ta, vitx.trace(b) as tb:
        a(x), b(x)
    torch.testing.assert_close(ta.attentions[3], tb.attentions[3], rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", [0, 1])
def test_nest_cam_mean_is_the_logit(pair, x, side):
    model = vitx.load_model(pair[side])
    exp = vitx.explain(model, x, "nest-cam", target=[0, 5, 7], normalize=False)
    assert exp.token_maps.shape == (3, 16, 16)
    torch.testing.assert_close(exp.token_maps.mean((1, 2)), exp.logits[torch.arange(3), exp.targets],
                               rtol=0, atol=1e-5)
    assert torch.equal(exp.token_maps[:, :4, :4], exp.token_maps[:, :1, :1].expand(-1, 4, 4))  # 4x4 top map


def test_traversal_by_hand():
    """Three levels of 4x4-position blocks: the root's quadrant scores (2x2 means) pick its lower-left child;
    in that level-1 block, the upper-right quadrant wins; so the leaf is level-0 block (2, 1)."""
    top = torch.zeros(1, 4, 4)
    top[0, 2:, :2] = 1.0                                  # lower-left quadrant mean 1
    top[0, 0, 3] = 3.0                                    # upper-right quadrant mean 0.75
    middle = torch.zeros(1, 8, 8)                         # level 1: 2x2 blocks of 4x4
    middle[0, 4:8, 0:4] = torch.tensor([[0., 0., 5., 5.], [0., 0., 5., 5.], [9., 0., 0., 0.], [0., 0., 0., 0.]])
    middle[0, 0:4, 4:8] = 100.0                           # a block not on the path: ignored
    bottom = torch.randn(1, 16, 16)
    count, paths = traverse([bottom, middle, top], block=4)
    assert [node["block"] for node in paths[0]] == [(0, 0), (1, 0), (2, 1)]
    assert paths[0][0]["children"] == [[0.0, 0.75], [1.0, 0.0]]
    assert paths[0][1]["children"] == [[0.0, 5.0], [2.25, 0.0]]
    assert "children" not in paths[0][2]
    expected = torch.ones(16, 16)
    expected[8:16, 0:8] += 1                              # the chosen level-1 block
    expected[8:12, 4:8] += 1                              # the leaf
    assert torch.equal(count[0], expected)


def test_gradcat_scores_are_feature_times_negative_gradient(pair, x):
    """The method's path equals the traversal of h_l = −Σ_c A_l ∂y_t/∂A_l computed with hooks on timm's levels."""
    theirs, _ = pair
    outputs = []
    hooks = [level.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for level in theirs.levels]
    try:
        logits = theirs(x)
    finally:
        for h in hooks:
            h.remove()
    targets = torch.tensor([1, 2, 3])
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), outputs)
    heat = [-(a * g).sum(1) for a, g in zip(outputs, grads)]                       # (B, H_l, W_l)
    expected_count, expected_paths = traverse(heat, block=4)
    exp = vitx.explain(theirs, x, "gradcat", target=targets, normalize=False)
    assert [[n["block"] for n in p] for p in exp.details["path"]] == [[n["block"] for n in p] for p in expected_paths]
    torch.testing.assert_close(exp.token_maps, expected_count)
    for ours_path, path in zip(exp.details["path"], expected_paths):
        for a, b in zip(ours_path, path):
            if "children" in b:
                torch.testing.assert_close(torch.tensor(a["children"]), torch.tensor(b["children"]), rtol=1e-4,
                                           atol=1e-7)


def test_methods_say_whether_they_apply_to_nest(pair, x):
    model = vitx.load_model(pair[1])
    rows = {row["name"]: row["kinds"] for row in vitx.methods()}
    assert "nest" in rows["gradcat"] and "vit" not in rows["gradcat"] and "nest" in rows["saliency"]
    with pytest.raises(vitx.VitxError, match="does not apply to 'nest' models"):
        vitx.explain(model, x, "generic-attention")
    with pytest.raises(vitx.VitxError, match="does not apply to 'vit' models"):
        vitx.explain(vitx.load_model("shapes-vit"), torch.zeros(1, 3, 64, 64), "gradcat")
    for name in ("saliency", "occlusion"):
        assert vitx.explain(model, x, name).maps.shape == (3, 64, 64)


def test_cli_explains_a_nest_file_and_draws_gradcat_trees(pair, tmp_path, capsys):
    path = save_checkpoint(pair[1], tmp_path / "nest.safetensors", {"arch": "nest_shapes", "config": {},
                                                                     "class_names": CLASS_NAMES})
    sample = vitx.data.shapes(n=1, seed=5)
    Image.fromarray((sample.images[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["explain", str(tmp_path / "a.png"), "--model", str(path), "--method", "gradcat,nest-cam",
                 "--out", str(out)]) == 0
    tree = Image.open(out / "a_gradcat_tree.png")
    assert tree.width > 2.5 * tree.height                                  # three panels: the top-3 classes
    assert (out / "a_nest-cam.npy").exists() and "GradCAT trees: 1" in capsys.readouterr().out


def test_shapes_nest_recipe_trains_a_loadable_nest(tmp_path):
    from vitx.training import train
    metrics = train("shapes-nest", tmp_path, seed=2, steps=2, batch_size=4, progress=False)
    model = vitx.load_model(str(tmp_path / "shapes-nest.safetensors"))
    assert model.config.kind == "nest" and model.config.levels == (2, 2, 2) and 0 <= metrics["accuracy"] <= 1
    card = (tmp_path / "shapes-nest.md").read_text()
    for fact in ("NesT, Zhang et al., AAAI 2022", "(16, 4, 1 blocks)", "vitx train shapes-nest --seed 2 --steps 2"):
        assert fact in card


def test_train_overrides_the_architecture(tmp_path, capsys):
    """`vitx train --config` trains a variant of a recipe's architecture; its file loads as that variant and its
    card says so, with a command that reproduces it."""
    args = ["train", "shapes-nest", "--steps", "1", "--batch-size", "2", "--out", str(tmp_path),
            "--config", "patch_size=2", "--config", "depths=(1, 2, 3)"]
    assert main(args) == 0
    model = vitx.load_model(str(tmp_path / "shapes-nest.safetensors"))
    assert model.config.levels == (1, 2, 3) and model.layout(torch.zeros(1, 3, 64, 64)).grid == (32, 32)
    card = (tmp_path / "shapes-nest.md").read_text()
    assert "overridden (patch_size=2, depths=(1, 2, 3))" in card and "2x2 patches (32 x 32)" in card
    assert '--config "patch_size=2" --config "depths=(1, 2, 3)"' in card
    capsys.readouterr()
    for bad, error in ((["--config", "heads=2"], "bad configuration for 'nest_shapes'"),
                       (["--config", "patch_size"], "expected NAME=VALUE")):
        assert main(["train", "shapes-nest", "--steps", "1", "--out", str(tmp_path / "bad"), *bad]) == 2
        assert error in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["train", "shapes-nest-gan", "--config", "patch_size=2", "--out", str(tmp_path / "bad")]) == 2
    assert "trains a generator" in capsys.readouterr().err


def test_localisation_study_runs_end_to_end():
    script = Path(__file__).parents[1] / "studies" / "nest_localisation.py"
    done = subprocess.run([sys.executable, str(script), "--models", "shapes-nest", "--n", "6", "--batch-size", "4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = dict(line.strip("| ").split(" | ") for line in done.stdout.splitlines()[2:])
    assert float(rows["accuracy"]) == 1.0 and 0 <= float(rows["pointing, nest-cam"]) <= 1
    assert all(0 <= float(v) <= 1 for v in rows["pointing, peak of h_2, GradCAT's sign / opposite"].split(" / "))


def test_data_efficiency_study_runs_end_to_end(tmp_path):
    script = Path(__file__).parents[1] / "studies" / "data_efficiency.py"
    done = subprocess.run([sys.executable, str(script), "--train-size", "40", "--test-size", "16", "--steps", "4",
                           "--batch-size", "8", "--eval-every", "2", "--seeds", "0", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    run = results["runs"]["nest_shapes"]["0.1"]["1"]
    assert run["step"] == [2, 4] and run["epoch"] == [2.0, 4.0]          # a 4-image subset: all 4 at each step
    assert len(results["runs"]["vitx_shapes"]["1.0"]) == 2 and (tmp_path / "curves.png").stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    assert "| `nest_shapes` | 915,752 |" in table and "--steps 4" in table
