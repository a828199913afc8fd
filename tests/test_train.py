import pytest
import torch

import vitx
from vitx.checkpoint import read_metadata
from vitx.data import CLASS_NAMES
from vitx.models import create_model
from vitx.training import RECIPES, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    train("shapes-vit", out, seed=4, steps=2, batch_size=4, progress=False)  # shapes-vit-multi starts from it
    metrics = train("shapes-vit-multi", out, seed=3, steps=3, batch_size=8, progress=False)
    return out, metrics


def test_train_saves_a_loadable_checkpoint_with_its_metadata(trained):
    out, metrics = trained
    path = out / "shapes-vit-multi.safetensors"
    meta = read_metadata(path)
    assert meta["arch"] == "vitx_shapes" and meta["config"] == {}
    assert meta["multi_label"] is True and meta["class_names"] == list(CLASS_NAMES)
    assert meta["seed"] == 3 and meta["steps"] == 3 and meta["metrics"] == metrics
    assert meta["command"] == f"vitx train shapes-vit-multi --seed 3 --steps 3 --batch-size 8 --out {out}"
    assert set(metrics["recall"]) == set(CLASS_NAMES) and 0 <= metrics["accuracy"] <= 1

    model = vitx.load_model(str(path))
    assert model.config.multi_label and model.config.class_names == CLASS_NAMES
    assert model.config.mean == (0.5,) * 3 and model.config.std == (0.25,) * 3
    assert model.config.image_size == (64, 64) and model.config.patch_size == (8, 8)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, len(CLASS_NAMES))


def test_multi_label_recipe_starts_from_the_single_label_model(trained):
    out, _ = trained
    single = dict(vitx.load_model(str(out / "shapes-vit.safetensors")).net.named_parameters())
    multi = dict(vitx.load_model(str(out / "shapes-vit-multi.safetensors")).net.named_parameters())
    assert read_metadata(out / "shapes-vit-multi.safetensors")["start"] == "shapes-vit"
    # three small AdamW steps move a weight by ~1e-3; shapes-vit (seed 4) and a fresh seed-3 start differ by ~0.1
    body = [k for k in single if not k.startswith("head.")]
    assert all(torch.allclose(multi[k], single[k], atol=1e-2) for k in body)
    fresh = dict(create_model("vitx_shapes").named_parameters())
    assert not all(torch.allclose(fresh[k], single[k], atol=1e-2) for k in body)


def test_model_card_states_command_seed_and_metrics(trained):
    out, metrics = trained
    card = (out / "shapes-vit-multi.md").read_text()
    for fact in ("vitx train shapes-vit-multi --seed 3 --steps 3", "Seed: 3", "data seed 10003",
                 "Start: the trained weights of `shapes-vit`",
                 f"{metrics['accuracy']:.3f}", "| lshape |"):
        assert fact in card


def test_training_is_reproducible_from_the_seed(tmp_path):
    weights = []
    for run in ("a", "b"):
        train("shapes-vit", tmp_path / run, seed=1, steps=2, batch_size=4, progress=False)
        weights.append(vitx.load_model(str(tmp_path / run / "shapes-vit.safetensors")).net.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = tmp_path / "c"
    train("shapes-vit", other, seed=2, steps=2, batch_size=4, progress=False)
    head = vitx.load_model(str(other / "shapes-vit.safetensors")).net.head.weight
    assert not torch.equal(head, weights[0]["head.weight"])


def test_unknown_recipe_and_bad_budget_are_refused(tmp_path):
    with pytest.raises(vitx.VitxError, match="recipes: " + ", ".join(RECIPES)):
        train("shapes-cnn", tmp_path)
    with pytest.raises(vitx.VitxError, match="steps"):
        train("shapes-vit", tmp_path, steps=0)
    with pytest.raises(vitx.VitxError, match="train shapes-vit first"):
        train("shapes-vit-multi", tmp_path, steps=1)
    assert not list(tmp_path.iterdir())
