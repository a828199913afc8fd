"""`resolve_targets` (explain's `target=` and the CLI's `--target`): indices in any whole-number form, names
case-insensitively, any comma-separated synonym, and one-line refusals of ambiguous or unknown classes."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from vitx import VitxError
from vitx.explain import resolve_targets

NAMES = ("tench, Tinca tinca", "goldfish, Carassius auratus", "crane", "crane", "Star", "ray", "stingray, ray", "7")


def model(names=NAMES):
    config = types.SimpleNamespace(class_names=names, num_classes=len(names))
    return types.SimpleNamespace(config=config, device=torch.device("cpu"))


@pytest.mark.parametrize("target, index", [
    (2, 2), (2.0, 2), ("2", 2), ("2.0", 2), (" 2 ", 2), (np.int64(3), 3), (np.float32(3.0), 3),
    (torch.tensor(4), 4), (torch.tensor(4.0), 4), ("7", 7),
    ("Star", 4), ("star", 4), ("STAR", 4), ("tench", 0), ("Tinca tinca", 0), ("tinca TINCA", 0),
    ("tench, Tinca tinca", 0), ("goldfish", 1), ("stingray, ray", 6), ("stingray", 6),
    ("ray", 5),  # a whole name wins over another class's synonym
])
def test_one_target_for_every_image(target, index):
    assert resolve_targets(target, 3, model()).tolist() == [index] * 3


def test_one_target_per_image_in_any_form():
    assert resolve_targets(["goldfish", 2.0, "3"], 3, model()).tolist() == [1, 2, 3]
    assert resolve_targets(torch.tensor([1.0, 0.0]), 2, model()).tolist() == [1, 0]
    assert resolve_targets(np.array([5, 6]), 2, model()).tolist() == [5, 6]
    assert resolve_targets(None, 2, model()) is None


@pytest.mark.parametrize("target, message", [
    ("crane", "ambiguous: it names 2 ('crane') and 3 ('crane')"),
    ("hexagon", "unknown target class 'hexagon'"),
    (2.5, "must be a whole number, got 2.5"),
    ("2.5", "must be a whole number, got 2.5"),
    (8, "out of range: this model has 8 classes (0-7)"),
    ("-1", "target class -1 is out of range"),
    (True, "must be a class index or name, got True"),
])
def test_bad_targets_are_refused_in_one_line(target, message):
    with pytest.raises(VitxError) as err:
        resolve_targets(target, 2, model())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_number_that_is_also_another_class_name_is_ambiguous():
    names = ("3", "1", "2", "0")
    with pytest.raises(VitxError, match=r"'0' is ambiguous: class 0 or the class named '0' \(3 \('0'\)\)"):
        resolve_targets("0", 1, model(names))
    assert resolve_targets(0, 1, model(names)).tolist() == [0]   # an int is always an index
    with pytest.raises(VitxError, match="got 3 targets for 2 images"):
        resolve_targets([0, 1, 2], 2, model())
