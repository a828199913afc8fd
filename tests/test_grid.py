"""The grid: pages, each row drawn once, labels wrapped inside their panel, probabilities with significant digits,
every multi-label class over the threshold, the colour bar, and names in any script without warnings."""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from matplotlib import colormaps

import vitx
from vitx.viz import grid, grid_pages, prediction_label, probability
from vitx.viz.grid import FOOTER, GAP
from vitx.viz.labels import THRESHOLD
from vitx.viz.text import text_width, wrap

grid_module = importlib.import_module("vitx.viz.grid")  # vitx.viz.grid is also the function's name


def images(count: int, size: int = 16) -> torch.Tensor:
    """Image i is uniformly i / count grey, so a drawn row tells which image it was."""
    return (torch.arange(count, dtype=torch.float32) / count)[:, None, None, None].expand(count, 3, size, size)


def test_pages_hold_rows_per_page_rows_and_each_row_is_drawn_once(monkeypatch):
    drawn, overlays = [], []
    row, overlay = grid_module._row, grid_module.overlay
    monkeypatch.setattr(grid_module, "_row", lambda image, *a: drawn.append(round(float(image[0, 0, 0]) * 7))
                        or row(image, *a))
    monkeypatch.setattr(grid_module, "overlay", lambda *a, **k: overlays.append(1) or overlay(*a, **k))
    x = images(7)
    maps = {"a": torch.rand(7, 16, 16), "b": torch.rand(7, 16, 16)}
    pages = grid_pages(x, maps, [f"image {i}" for i in range(7)], rows_per_page=3, cell=40)
    assert len(pages) == 3
    assert drawn == list(range(7)) and len(overlays) == 7 * 2          # every row once, every cell once
    full, last = pages[0].height, pages[2].height
    assert pages[1].height == full and full - last == 2 * (40 + GAP)    # 3, 3 and 1 rows of 40 px
    assert {page.width for page in pages} == {40 + GAP + 3 * (40 + GAP)}
    assert len(grid_pages(x, maps, rows_per_page=7, cell=40)) == 1


def test_long_labels_are_wrapped_inside_their_panel():
    name = "a-very-long-file-name-" * 6 + "end"
    label = prediction_label(name, torch.zeros(3), lambda k: "tench, Tinca tinca, a fish of European waters", target=1)
    picture = np.asarray(grid(images(1), {"m": torch.rand(1, 16, 16)}, [label], cell=120))
    body = picture[:-FOOTER]
    assert (body[:, 120:120 + GAP] == 255).all()               # nothing spills past the panel into the image
    assert (body[:, :3] == 255).all() and (body[:, 3:120] < 128).any()   # nor is cut at the left edge
    lines = wrap(label, 120 - 2 * GAP, 8)
    assert all(text_width(line, 8) <= 120 - 2 * GAP for line in lines)
    assert "".join(lines).replace(" ", "") == label.replace("\n", "").replace(" ", "")   # every character kept
    assert len(lines) > 6 and picture.shape[0] - FOOTER > (GAP + 13) + 120   # the row grew to hold the label


def test_probabilities_keep_their_significant_digits():
    assert [probability(p) for p in (0.987, 0.5, 0.00123, 3.4e-7, 0.0)] == ["0.987", "0.500", "0.0012", "3.4e-07", "0"]
    label = prediction_label("x", torch.zeros(1000), lambda k: f"class {k}", target=7)
    assert label.splitlines() == ["x", "predicted: class 0 (0.001)", "target: class 7 (0.001)"]


def test_multi_label_rows_show_every_class_over_the_threshold():
    model = vitx.load_model("shapes-vit-multi")
    data = vitx.data.shapes(n=6, seed=30_000, variant="multi")
    logits = model(model.normalize(data.images)).detach()
    for i in range(6):
        probs = logits[i].sigmoid()
        label = prediction_label("img", logits[i], model.class_name, multi_label=True)
        present = [model.class_name(k) for k in range(len(probs)) if probs[k] >= THRESHOLD]
        assert present and sorted(present) == sorted(model.class_name(int(k)) for k in data.labels[i].nonzero())
        for k, name in enumerate(model.config.class_names):
            assert (f"{name} ({probability(float(probs[k]))})" in label) == (probs[k] >= THRESHOLD)
    nothing = prediction_label("img", torch.tensor([-3.0, -1.0]), lambda k: "ab"[k], multi_label=True)
    assert nothing.splitlines()[1] == f"predicted: none ≥ {THRESHOLD}; top: b ({probability(float(torch.tensor(-1.0).sigmoid()))})"


def test_colour_bar_spans_the_colour_map():
    picture = np.asarray(grid(images(2), {"m": torch.rand(2, 16, 16)}, ["a", "b"], cell=60, cmap="jet")).astype(int)
    y = picture.shape[0] - FOOTER + 6 + 6                         # the middle of the bar
    left = 60 + GAP
    ends = (colormaps["jet"]([0.0, 1.0])[:, :3] * 255).round()
    np.testing.assert_allclose(picture[y, left], ends[0], atol=2)
    np.testing.assert_allclose(picture[y, left + 2 * (60 + GAP) - GAP - 1], ends[1], atol=2)   # under both cells
    assert (picture[y, left + 60] != 255).any()
    without = grid(images(2), {"m": torch.rand(2, 16, 16)}, ["a", "b"], cell=60, colorbar=False)
    assert without.height == picture.shape[0] - FOOTER


@pytest.mark.parametrize("name", ["图片_猫", "画像ファイル", "이미지", "plain"])
def test_names_in_any_script_draw_without_warnings(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        picture = grid(images(1), {"m": torch.rand(1, 16, 16)}, [name], cell=60)
    assert not [w for w in caught if "Glyph" in str(w.message)]
    assert (np.asarray(picture)[GAP:60, :60] < 128).any()          # the name is drawn (glyphs or boxes)
