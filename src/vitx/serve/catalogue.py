"""What the server offers: its models (the zoo's classifiers, VQA models, detectors and image-text models, and any
given with ``--model``), each loaded once, lazily, under a lock; the methods that apply to each; its sample images."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..loading import load_model
from ..model import Model
from ..registry import get_method, method_names, refusals
from ..zoo import models as zoo_models
from . import scores

# zoo kinds offered, and the kind the API names each
KINDS = {"classifier": "classifier", "concepts": "classifier", "vqa": "vqa", "clip": "clip", "detr": "detr"}
SAMPLES_DIR = Path(__file__).parent.parent / "data" / "samples"
# sample folders (prefix of their names in the API) -> the model kinds they suit
SAMPLE_SETS = {"": ("classifier",), "vqa": ("vqa", "detr"), "captions": ("clip", "detr")}


class UnknownName(Exception):
    """A model or sample the server does not offer."""


@dataclass
class Entry:
    source: str
    quality: str = ""
    kind: str | None = None   # the API's kind; known before loading for the zoo's models
    model: Model | None = None
    methods: list | None = None
    loading: threading.Lock = field(default_factory=threading.Lock)
    running: threading.Lock = field(default_factory=threading.Lock)   # one forward or explanation at a time


class Catalogue:
    """The models by name: the zoo's offered kinds first, then ``extra`` (zoo names, hf:/timm: names, files)."""

    def __init__(self, extra: list[str] | None = None):
        self.entries: dict[str, Entry] = {}
        for row in zoo_models():
            if row["kind"] in KINDS and Path(row["file"]).exists():
                self.entries[row["name"]] = Entry(row["name"], row["quality"], KINDS[row["kind"]])
        for name in extra or ():
            self.entries.setdefault(name, Entry(name))
        self.scores = scores.load()
        self.samples = find_samples()

    def entry(self, name: str) -> Entry:
        if name not in self.entries:
            raise UnknownName(f"unknown model {name!r}; this server offers: {', '.join(self.entries)}")
        return self.entries[name]

    def model(self, name: str) -> Model:
        """The model, loaded on first use (once, whatever the number of threads asking)."""
        entry = self.entry(name)
        with entry.loading:
            if entry.model is None:
                entry.model = load_model(entry.source)
            return entry.model

    def kind(self, name: str) -> str:
        entry = self.entry(name)
        if entry.kind is None:
            entry.kind = KINDS.get(self.model(name).config.kind, "classifier")
        return entry.kind

    def row(self, name: str) -> dict:
        model, kind = self.model(name), self.kind(name)
        return {"name": name, "kind": kind, "text": {"vqa": "question", "clip": "prompts"}.get(kind),
                "detector": model.detector, "classes": list(model.config.class_names),
                "image_size": int(model.config.image_size[0]), "quality": self.entry(name).quality}

    def methods(self, name: str | None) -> list[dict]:
        """Every registered method with whether it applies to model ``name`` (and why not), and its leaderboard
        scores on that model where the benchmarks have them; without a model, every method."""
        if name is None:
            return [method_row(get_method(method)) for method in method_names()]
        entry = self.entry(name)
        model = self.model(name)
        with entry.loading:
            if entry.methods is None:
                board = self.scores.get(name, {})
                entry.methods = [method_row(get_method(method), why, board) for method, why in refusals(model).items()]
            return entry.methods

    def sample_rows(self) -> list[dict]:
        """Per sample: its name, its URL and the models it suits (by their kind)."""
        kinds = {name: self.kind(name) for name in self.entries}
        return [{"name": sample, "url": f"/api/samples/{sample}",
                 "models": [name for name, kind in kinds.items() if kind in suits]}
                for sample, (_, suits) in self.samples.items()]

    def sample(self, name: str) -> bytes:
        if name not in self.samples:
            raise UnknownName(f"unknown sample {name!r}; the samples are: {', '.join(self.samples)}")
        return self.samples[name][0]


def method_row(info, reason: str | None = None, board: dict | None = None) -> dict:
    found = (board or {}).get("methods", {}).get(info.name)
    return {"name": info.name, "family": info.family, "paper": info.paper, "cost": info.cost, "output": info.output,
            "summary": info.summary, "params": dict(info.defaults), "ranges": dict(info.ranges),
            "applies": reason is None, "reason": reason, "scores": found,
            "scores_command": board.get("command") if found else None,
            "scores_better": {metric: board["better"][metric] for metric in found if metric in board["better"]}
            if found else None}


def find_samples() -> dict[str, tuple[bytes, tuple[str, ...]]]:
    """The bundled sample images by API name (a folder's images prefixed with its name: ``vqa_0_triangle.png``),
    read once: requests look names up here and never reach the file system."""
    found = {}
    for folder, kinds in SAMPLE_SETS.items():
        for path in sorted((SAMPLES_DIR / folder).glob("*.png")):
            found[f"{folder}_{path.name}" if folder else path.name] = (path.read_bytes(), kinds)
    return found
