import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vitx.data import CLASS_NAMES, ShapesData, shapes
from vitx.data.shapes import _SHAPES, write_samples

C = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def single():
    return shapes(n=200, seed=0, variant="single", image_size=48)


@pytest.fixture(scope="module")
def multi():
    return shapes(n=60, seed=1, variant="multi", image_size=64)


def _objects(data):
    """Yield (image, mask) for every object of every image."""
    for image, label, mask in (data[i] for i in range(len(data))):
        if data.variant == "single":
            yield image, mask
        else:
            for c in torch.nonzero(label).flatten():
                yield image, mask[c]


def test_class_names():
    assert len(CLASS_NAMES) >= 8 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert not {"square", "diamond"} <= set(CLASS_NAMES)


def test_single_shapes_and_dtypes(single):
    assert isinstance(single, ShapesData) and len(single) == 200
    assert single.images.shape == (200, 3, 48, 48) and single.images.dtype == torch.float32
    assert single.images.min() >= 0 and single.images.max() <= 1
    assert single.labels.shape == (200,) and single.labels.dtype == torch.int64
    assert single.labels.min() >= 0 and single.labels.max() < C
    assert single.masks.shape == (200, 48, 48) and single.masks.dtype == torch.bool
    assert single.class_names == CLASS_NAMES and single.variant == "single" and single.seed == 0
    image, label, mask = single[7]
    assert torch.equal(image, single.images[7]) and label == single.labels[7] and torch.equal(mask, single.masks[7])


def test_multi_shapes_and_dtypes(multi):
    assert multi.images.shape == (60, 3, 64, 64) and multi.images.dtype == torch.float32
    assert multi.images.min() >= 0 and multi.images.max() <= 1
    assert multi.labels.shape == (60, C) and multi.labels.dtype == torch.float32
    assert set(multi.labels.unique().tolist()) <= {0.0, 1.0}
    assert multi.masks.shape == (60, C, 64, 64) and multi.masks.dtype == torch.bool


@pytest.mark.parametrize("variant", ["single", "multi"])
def test_determinism_and_prefix(variant):
    a = shapes(n=10, seed=3, variant=variant, image_size=32)
    b = shapes(n=10, seed=3, variant=variant, image_size=32)
    big = shapes(n=25, seed=3, variant=variant, image_size=32)
    other = shapes(n=10, seed=4, variant=variant, image_size=32)
    for name in ("images", "labels", "masks"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert torch.equal(getattr(a, name), getattr(big, name)[:10])
    assert not torch.equal(a.images, other.images)


@pytest.mark.parametrize("fixture", ["single", "multi"])
def test_masks_are_pixel_exact(fixture, request):
    data = request.getfixturevalue(fixture)
    count = 0
    for image, mask in _objects(data):
        assert mask.sum() > 0
        colours = image[:, mask]
        colour = colours[:, :1]
        assert torch.equal(colours, colour.expand_as(colours))  # every mask pixel has the object colour
        painted = (image == colour[:, :, None]).all(0)
        assert torch.equal(painted, mask)  # ... and no pixel outside the mask has it
        count += 1
    assert count >= len(data)


def test_shapes_fit_the_unit_disc_and_are_solid():
    g = np.linspace(-1.5, 1.5, 601)
    u, v = np.meshgrid(g, g)
    cell = (g[1] - g[0]) ** 2
    for name, inside in _SHAPES.items():
        m = inside(u, v)
        assert np.hypot(u[m], v[m]).max() <= 1.0, name
        assert m.sum() * cell >= 0.25 * np.pi, name  # mostly solid, not an outline


def test_objects_are_inside_the_image(single):
    size = single.images.shape[-1]
    for i in torch.nonzero(single.labels == CLASS_NAMES.index("circle")).flatten():
        ys, xs = torch.nonzero(single.masks[i], as_tuple=True)
        height, width = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert abs(height - width) <= 1  # a circle cut by the border would not be round
        assert min(height, width) >= 0.35 * size - 2


def test_object_contrast(single):
    for image, mask in _objects(single):
        grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 7, stride=1, padding=3)[0, 0] > 0
        around = image[:, grown & ~mask].mean(1)  # a 3-pixel ring around the object
        colour = image[:, mask][:, 0]
        assert (colour - around).abs().mean() >= 0.15


def test_multi_objects(multi):
    present = multi.labels.sum(1)
    assert ((present >= 2) & (present <= 3)).all()
    assert (multi.masks.sum(1) <= 1).all()  # masks of different classes never overlap
    assert torch.equal(multi.labels.bool(), multi.masks.any(dim=(2, 3)))


def test_every_class_appears(single):
    assert set(single.labels.tolist()) == set(range(C))


def test_export_single(tmp_path):
    data = shapes(n=3, seed=5, image_size=32)
    root = data.export(tmp_path / "out")
    assert root == tmp_path / "out"
    for i in range(3):
        mask = np.array(Image.open(root / "masks" / f"{i:05d}.png"))
        assert set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, data.masks[i].numpy())
        image = np.array(Image.open(root / "images" / f"{i:05d}.png")) / 255.0
        assert np.abs(image - data.images[i].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    with open(root / "labels.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "file", "labels"]
    assert rows[1:] == [[str(i), f"images/{i:05d}.png", CLASS_NAMES[int(data.labels[i])]] for i in range(3)]


def test_export_multi(tmp_path):
    data = shapes(n=2, seed=5, variant="multi", image_size=32)
    root = data.export(tmp_path)
    with open(root / "labels.csv") as f:
        rows = list(csv.reader(f))[1:]
    for i, row in enumerate(rows):
        names = [CLASS_NAMES[c] for c in torch.nonzero(data.labels[i]).flatten()]
        assert row[2] == ";".join(names)
        for name in names:
            mask = np.array(Image.open(root / "masks" / f"{i:05d}_{name}.png")) > 0
            assert np.array_equal(mask, data.masks[i, CLASS_NAMES.index(name)].numpy())
    assert len(list((root / "masks").iterdir())) == int(data.labels.sum())


def test_write_samples(tmp_path):
    paths = write_samples(tmp_path)
    assert len(paths) == 8 and len(list(tmp_path.iterdir())) == 8
    data = shapes(n=max(int(p.name.split("_")[0]) for p in paths) + 1, seed=2024, image_size=64)
    for c, path in enumerate(paths):
        index, name = path.stem.split("_", 1)
        assert name == CLASS_NAMES[c] and int(data.labels[int(index)]) == c
        image = np.array(Image.open(path)) / 255.0
        assert np.abs(image - data.images[int(index)].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n": 0}, "n"),
        ({"n": -3}, "n"),
        ({"variant": "triple"}, "variant"),
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b") as err:
        shapes(**kwargs)
    if word == "variant":
        assert "single" in str(err.value) and "multi" in str(err.value)
