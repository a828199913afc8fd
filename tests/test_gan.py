"""NesT's generator experiment: the two generators' outputs and sizes, the Fréchet distance on constructed
features with known answers, the generator recipes end to end on a tiny budget, `vitx generate`, and the
comparison study's script."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitx
from vitx.checkpoint import read_metadata
from vitx.cli import main
from vitx.data import shapes
from vitx.training.gan import FD_IMAGES, FEATURE_MODEL, REAL_SEED, features, frechet_distance, load_generator, sample
from vitx.models.generators import ConvGenerator, Discriminator, NestGenerator
from vitx.training import train


@pytest.mark.parametrize("generator", [NestGenerator(), ConvGenerator()])
def test_generators_draw_images_in_range(generator):
    images = sample(generator.eval(), 5, seed=0)
    assert images.shape == (5, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, sample(generator, 5, seed=0)) and not torch.equal(images, sample(generator, 5, seed=1))
    assert Discriminator()(images).shape == (5,)


def test_generators_have_comparable_capacity():
    sizes = [sum(p.numel() for p in g.parameters()) for g in (NestGenerator(), ConvGenerator())]
    assert abs(sizes[0] - sizes[1]) < 0.05 * sizes[0], sizes


def test_frechet_distance_known_answers():
    real = np.random.default_rng(0).normal(size=(500, 6)) @ np.diag([1, 2, 3, 1, 1, 0.5])
    assert abs(frechet_distance(real, real)) < 1e-6
    shift = np.array([1.0, -2.0, 0, 0, 0.5, 0])
    assert frechet_distance(real, real + shift) == pytest.approx((shift ** 2).sum(), rel=1e-6)  # same covariance
    cov = np.cov(real, rowvar=False)                     # x2 scales Σ by 4: Tr(Σ + 4Σ − 2·2Σ) = Tr(Σ)
    assert frechet_distance(real, 2 * real) == pytest.approx(((real.mean(0)) ** 2).sum() + np.trace(cov), rel=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    metrics = train("shapes-nest-gan", out, seed=1, steps=4, batch_size=4, progress=False)
    return out, metrics


def test_generator_recipe_records_the_distance_and_ships_a_card(trained):
    out, metrics = trained
    meta = read_metadata(out / "shapes-nest-gan.safetensors")
    assert meta["kind"] == "generator" and meta["generator"] == "nest" and metrics["fd"] > 0
    card = (out / "shapes-nest-gan.md").read_text()
    assert "vitx train shapes-nest-gan --seed 1 --steps 4 --batch-size 4" in card and f"{metrics['fd']:.2f}" in card
    generator, _ = load_generator(out / "shapes-nest-gan.safetensors")
    assert sample(generator, 2, seed=0).shape == (2, 3, 64, 64)
    with pytest.raises(vitx.VitxError, match="an image generator"):
        vitx.load_model(str(out / "shapes-nest-gan.safetensors"))


def test_generate_command_writes_samples_and_refuses_classifiers(trained, tmp_path, capsys):
    out, _ = trained
    assert main(["generate", "--model", str(out / "shapes-nest-gan.safetensors"), "--n", "3", "--seed", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sample_000.png", "sample_001.png",
                                                                  "sample_002.png", "samples.png"]
    assert Image.open(tmp_path / "s" / "sample_001.png").size == (64, 64)
    assert main(["generate", "--model", "shapes-vit", "--out", str(tmp_path / "t")]) == 2
    assert "is not a generator" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_gan_study_runs_end_to_end(tmp_path):
    script = Path(__file__).parents[1] / "studies" / "nest_gan.py"
    done = subprocess.run([sys.executable, str(script), "--steps", "4", "--batch-size", "4", "--fd-every", "2",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"shapes-nest-gan", "shapes-conv-gan"}
    assert results["runs"]["shapes-conv-gan"]["fd_curve"]["step"] == [2, 4]
    assert (tmp_path / "fd.png").exists() and (tmp_path / "samples_shapes-conv-gan.png").exists()
    assert "| `shapes-nest-gan` |" in (tmp_path / "table.md").read_text()


def test_zoo_generator_reproduces_the_distance_on_its_card():
    """The shipped generator, sampled with its card's latent seed, gives the card's Fréchet distance; the same
    distance between two sets of real images is far smaller (the scale it is read against in docs/nest.md)."""
    generator, meta = load_generator("shapes-nest-gan")
    scorer = vitx.load_model(FEATURE_MODEL)
    real = features(scorer, shapes(n=FD_IMAGES, seed=REAL_SEED).images)
    fd = frechet_distance(real, features(scorer, sample(generator, FD_IMAGES, meta["test_seed"])))
    assert fd == pytest.approx(meta["metrics"]["fd"], abs=0.01)
    assert frechet_distance(real, features(scorer, shapes(n=FD_IMAGES, seed=REAL_SEED + 1).images)) < 0.05 * fd
