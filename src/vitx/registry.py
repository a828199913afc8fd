"""The method registry: every explanation method, with what it needs and what it costs.

A method is a function ``fn(batch: Batch, **params) -> Tensor`` returning a token map (B, gh, gw)
or a pixel map (B, H, W); :func:`register` records it with its metadata. The CLI, the benchmark and
``vitx.methods()`` all read this one table.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
import re
import typing
from dataclasses import dataclass, field
from types import UnionType
from typing import Callable

from .errors import VitxError, one_line
from .memory import forward_only, one_graph

# what a method needs of the model: "head_row" the row of the token(s) the head reads (the class token's, or the
# mean of the pooled tokens' rows where the head averages them), "cls_token" the class token itself
NEEDS = {"attention", "gradients", "head_row", "cls_token", "trained_module"}
HEAD_ROWS = ("cls", "avg")   # heads whose row a "head_row" method can read
# model kinds: "vit" a flat token sequence, "nest" NesT's blocked hierarchy, "swin" Swin's shifted windows, "vqa" a
# bi-modal question answerer (its head reads the text's [CLS] token, which stands for the head's row), "detr" a
# DETR-like detector (each object is one of its decoder's queries; its query's row stands for the head's row), "hvt"
# HVT's flat sequence that max pooling shortens between stages (no class token)
ANY_MODEL = ("vit", "nest", "swin")
# why a method that does not name a kind cannot apply to it: {kind: {method family (or "" for any other): why}}
KIND_LIMITS = {
    "vit": {"nest": "it reads NesT's levels of image blocks, which a flat ViT does not have",
            "pruning": "it reads the max pooling between an HVT's stages, and a flat ViT keeps one token sequence "
                       "through every block"},
    "hvt": {"": "HVT's token sequence shrinks by max pooling between stages and has no class token, which this "
                "method's per-token formulas do not follow",
            "attention": "it follows attention token by token across blocks, and HVT's blocks attend over sequences "
                         "that max pooling shortens between stages (64, 31, 15 tokens on shapes-hvt), with no class "
                         "token",
            "relevance": "its relevance rules know a flat ViT's blocks, not the max pooling between HVT's stages",
            "nest": "it reads NesT's levels of image blocks, which HVT does not have",
            "perturbation": "AtMan scales each patch as a key in every attention layer and ViT-CX clusters the last "
                            "block's patch tokens, and HVT's later blocks hold pooled tokens, not patches; ViT "
                            "Shapley's explainer is trained for a ViT with a class token (occlusion, rise and "
                            "kernel-shap apply)",
            "pruning": "it prunes a flat ViT that reads its class token (its patch tokens, or X-Pruner's heads and "
                       "channels), and HVT pools its tokens instead (hvt-pooling reads that pooling)"},
    "swin": {"": "Swin has no class token, and its blocks attend within shifted windows on token maps that shrink "
                 "stage by stage, which this method's per-token formulas do not follow",
             "nest": "it reads NesT's levels of image blocks, which Swin does not have"},
    "vqa": {"": "it explains an image-only token sequence, and a VQA model reads the question and the image through "
                "attention sites of several streams, answering from the text's [CLS] token",
            "relevance": "it returns the relevance of the pixels alone, and a VQA model's relevance also reaches "
                         "the question's word embeddings, which it does not return (partial-lrp and "
                         "transformer-attribution apply to VQA models)"},
    "nest": {"": "NesT attends only within image blocks, level by level, and aggregates the blocks with convolution "
                 "and pooling, so no token-by-token attention or token sequence spans the image",
             "relevance": "its relevance rules know the pre-norm blocks of a flat ViT, not NesT's block aggregation "
                          "(convolution, layer norm and max pooling between levels)"},
    "detr": {"attention": "it reads one self-attention sequence from a class token or pooled patches, and a "
                          "detector's object is a decoder query that reads the image through cross-attention "
                          "(raw-attention, rollout, generic-attention and attention-gradcam follow that graph)",
             "gradient": "Grad-CAM reads the patch tokens entering a block, and a detector's last blocks are decoder "
                         "layers whose tokens are its object queries, not the image's patches",
             "nest": "it reads NesT's levels of image blocks, which a detector does not have",
             "perturbation": "it is made for a classifier's token sequence: AtMan scales each patch as a key in "
                             "every attention layer (a detector's decoder self-attention has object queries as "
                             "keys), ViT-CX clusters the last block's patch tokens (a detector's last block holds "
                             "its object queries), ViT Shapley's explainer is trained for a classifier "
                             "(occlusion, rise and kernel-shap apply)",
             "pruning": "it prunes the patch tokens of a classifier that reads its class token, and a detector's "
                        "objects are decoder queries reading every image token",
             "inherent": "it reads a classifier's own explanation (a tree of prototypes, concepts, attribute maps) or "
                         "cuts a classifier's patch tokens by the target's score, and a detector's objects are decoder "
                         "queries, not classes of the image",
             "self-supervised": "it reads the class token's attention in the last block, and a detector's last "
                                "blocks are decoder layers whose tokens are its object queries"}}

# The ranges of parameters that mean the same wherever they appear; a method narrows or adds its own with
# ``register(..., ranges=...)``. Intervals are written as in mathematics: "[1, inf)" is 1 <= value.
RANGES = {
    "steps": "[1, inf)", "samples": "[1, inf)", "masks": "[1, inf)", "internal_batch_size": "[1, inf)",
    "window": "[1, inf)", "stride": "[1, inf)", "cell": "[1, inf)", "start_layer": "[0, inf)",
    "start_layer_text": "[0, inf)",
    "discard_ratio": "[0, 1)", "keep": "(0, 1]", "suppression": "[0, 1]", "threshold": "[0, 1]",
    "noise_level": "[0, inf)", "noise": "[0, inf)", "distance_threshold": "(0, inf)",
}


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    family: str
    paper: str
    needs: frozenset[str]
    output: str                     # "tokens" or "pixels"
    cost: str                       # forward (F) and backward (B) passes per image
    kinds: tuple[str, ...] = ("vit",)
    defaults: dict = field(default_factory=dict)
    requires: Callable | None = None  # requires(config, params): raise when the model lacks what the method needs
    memory: Callable = one_graph    # memory(params) -> (graphs per image, graphs per pass); see vitx.memory
    fits: Callable | None = None    # fits(model, params): raise when the model cannot take the method (no forward)
    types: dict = field(default_factory=dict)    # parameter -> the types its annotation allows
    ranges: dict = field(default_factory=dict)   # parameter -> interval, e.g. "[0, 1)"
    shows: str = ""                 # what the explanation is when the map is not all of it (X-Pruner's units)

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line."""
        return " ".join((inspect.getdoc(self.fn) or "").split("\n\n")[0].split())

    def row(self) -> dict:
        return {"name": self.name, "family": self.family, "paper": self.paper, "needs": sorted(self.needs),
                "output": self.output, "cost": self.cost, "memory": self.memory_text(), "kinds": list(self.kinds),
                "params": dict(self.defaults), "ranges": dict(self.ranges), "shows": self.shows, "summary": self.summary}

    def memory_text(self, params: dict | None = None) -> str:
        """The declared memory in model graphs (:mod:`vitx.memory`), e.g. '1 graph/image + 64 graphs/pass'."""
        per_image, per_pass = self.memory({**self.defaults, **(params or {})})
        text = f"{per_image:g} graph/image"
        return text + (f" + {per_pass:g} graphs/pass" if per_pass else "")

    def bind(self, params: dict) -> dict:
        """The defaults updated with ``params``, each checked against the type its annotation names and its
        range. Integer-valued strings and floats are taken for int parameters (the command line gives strings),
        numeric strings for float ones, "true"/"false" for bool ones; anything else is one ``VitxError``."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise VitxError(f"method {self.name!r} has no parameter {unknown[0]!r} (its parameters: {known})")
        bound = dict(self.defaults)
        for name, value in params.items():
            if name in self.types:
                value = coerce(value, self.types[name])
                if value is NOT_ONE:
                    expected = " or ".join("None" if t is type(None) else t.__name__ for t in self.types[name])
                    raise VitxError(f"method {self.name!r}: parameter {name!r} must be {expected}, "
                                    f"got {params[name]!r}")
            if name in self.ranges and value is not None and not within(value, self.ranges[name]):
                raise VitxError(f"method {self.name!r}: parameter {name!r} must be in {self.ranges[name]}, "
                                f"got {params[name]!r}")
            bound[name] = value
        return bound

    def check(self, config, layout, params: dict | None = None) -> None:
        """Say before running when this method cannot apply to the model (with ``params``, or its defaults)."""
        if config.kind not in self.kinds:
            limits = KIND_LIMITS.get(config.kind, {})
            why = limits.get(self.family, limits.get(""))
            why = f": {why}" if why else ""
            raise VitxError(f"method {self.name!r} does not apply to {config.kind!r} models{why} "
                            f"(it works on: {', '.join(self.kinds)})")
        if "cls_token" in self.needs and (layout.cls_index is None or config.pooling != "cls"):
            has = "has none" if layout.cls_index is None else f"reads {config.pooling!r}-pooled tokens"
            raise VitxError(f"method {self.name!r} needs a head that reads the class token, and this model's head "
                            f"{has}")
        if "head_row" in self.needs and config.kind in (*ANY_MODEL, "clip") and (config.pooling not in HEAD_ROWS or
                                         config.pooling == "cls" and layout.cls_index is None):
            raise VitxError(f"method {self.name!r} reads the row of the token the head reads (the class token, or "
                            f"the mean of the patch tokens' rows for a mean-pooled head), and this model's head reads "
                            f"{config.pooling!r}-pooled tokens")
        if self.requires is not None:
            self.requires(config, {**self.defaults, **(params or {})})

    def check_model(self, model, layout, params: dict | None = None) -> None:
        """:meth:`check` on ``model``'s configuration, then the ``fits`` hook on its layers: every refusal that
        can be said before anything runs."""
        self.check(model.config, layout, params)
        if self.fits is not None:
            self.fits(model, {**self.defaults, **(params or {})})


NOT_ONE = object()   # what coerce returns for a value of none of the types
INTERVAL = re.compile(r"([\[(])\s*(-?inf|[-+.\deE]+)\s*,\s*(-?inf|[-+.\deE]+)\s*([\])])")


def coerce(value, types: tuple[type, ...]):
    """``value`` as one of ``types`` (tried in their order for strings), or NOT_ONE."""
    if value is None:
        return None if type(None) in types else NOT_ONE
    for kind in types:
        if kind is bool:
            if isinstance(value, bool) or isinstance(value, str) and value.lower() in ("true", "false"):
                return value if isinstance(value, bool) else value.lower() == "true"
        elif isinstance(value, bool):
            continue
        elif kind is int:
            if isinstance(value, numbers.Integral) or isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
                return int(value)
        elif kind is float:
            if isinstance(value, numbers.Real):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif kind is str and isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    return NOT_ONE


def within(value, interval: str) -> bool:
    """Whether a number lies in ``interval``, e.g. "[0, 1)" or "(0, inf)"; NaN lies in none."""
    left, low, high, right = INTERVAL.fullmatch(interval).groups()
    low, high = float(low), float(high)
    if not isinstance(value, numbers.Real) or math.isnan(value):
        return False
    return (low <= value if left == "[" else low < value) and (value <= high if right == "]" else value < high)


def annotated_types(fn: Callable) -> dict[str, tuple[type, ...]]:
    """Parameter -> the types its annotation names (int, float, str, bool, None, or a union of them)."""
    found = {}
    for name, hint in typing.get_type_hints(fn).items():
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
        if name != "return" and all(t in (int, float, str, bool, type(None)) for t in options):
            found[name] = tuple(sorted(options, key=lambda t: t in (str, type(None))))  # numbers first, for strings
    return found


_METHODS: dict[str, Method] = {}


def register(name: str, *, family: str, paper: str, needs=(), output: str = "tokens", cost: str,
             kinds=("vit",), requires: Callable | None = None, memory: Callable | None = None,
             fits: Callable | None = None, ranges: dict | None = None, shows: str = "") -> Callable:
    """Record ``fn`` as method ``name``. ``memory(params) -> (graphs per image, graphs per pass)``
    (:mod:`vitx.memory`) defaults to one graph per image for a method that needs gradients and a forward pass's
    share otherwise. ``fits(model, params)`` refuses, before any forward, a model whose layers the method cannot
    take. ``shows`` says what the explanation is where the map is not all of it (e.g. a class-by-unit table in
    ``exp.details``, beside which the map is vitx's own addition).
    Its parameters' types come from their annotations, their ranges from :data:`RANGES` by
    name, updated with ``ranges`` (parameter -> interval such as "[2, inf)")."""
    needs = frozenset(needs)
    memory = memory or (one_graph if "gradients" in needs else forward_only)
    assert needs <= NEEDS and output in ("tokens", "pixels") and name not in _METHODS, name

    def decorate(fn: Callable) -> Callable:
        defaults = {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}
        limits = {p: RANGES[p] for p in defaults if p in RANGES} | (ranges or {})
        assert all(p in defaults and (defaults[p] is None or within(defaults[p], r)) for p, r in limits.items()), name
        _METHODS[name] = Method(name, fn, family, paper, needs, output, cost, tuple(kinds), defaults, requires,
                                memory, fits, types=annotated_types(fn), ranges=limits, shows=shows)
        return fn
    return decorate


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise VitxError(f"unknown method {name!r}; known: {', '.join(_METHODS)}")
    return _METHODS[name]


def methods() -> list[dict]:
    """Registry rows: name, family, paper, needs, output, cost, parameters and a one-line summary."""
    return [m.row() for m in _METHODS.values()]


def method_names() -> list[str]:
    return list(_METHODS)


def refusals(model, layout=None) -> dict[str, str | None]:
    """Per registered method, in order, why it cannot apply to ``model`` (one line, what :meth:`Method.check_model`
    says before anything runs), or None where it applies. ``layout``: the model's input's (default: an image of its
    configured size)."""
    layout = model.layout() if layout is None else layout
    found = {}
    for name, info in _METHODS.items():
        try:
            info.check_model(model, layout)
            found[name] = None
        except VitxError as err:
            found[name] = one_line(err)
    return found
