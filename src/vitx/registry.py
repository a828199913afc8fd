"""The method registry: every explanation method, with what it needs and what it costs.

A method is a function ``fn(batch: Batch, **params) -> Tensor`` returning a token map (B, gh, gw)
or a pixel map (B, H, W); :func:`register` records it with its metadata. The CLI, the benchmark and
``vitx.methods()`` all read this one table.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from .errors import VitxError

NEEDS = {"attention", "gradients", "cls_token", "trained_module"}
ANY_MODEL = ("vit", "nest")  # model kinds: "vit" a flat token sequence, "nest" NesT's blocked hierarchy


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

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line."""
        return " ".join((inspect.getdoc(self.fn) or "").split("\n\n")[0].split())

    def row(self) -> dict:
        return {"name": self.name, "family": self.family, "paper": self.paper, "needs": sorted(self.needs),
                "output": self.output, "cost": self.cost, "kinds": list(self.kinds), "params": dict(self.defaults),
                "summary": self.summary}

    def bind(self, params: dict) -> dict:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise VitxError(f"method {self.name!r} has no parameter {unknown[0]!r} (its parameters: {known})")
        return {**self.defaults, **params}

    def check(self, config, layout, params: dict | None = None) -> None:
        """Say before running when this method cannot apply to the model (with ``params``, or its defaults)."""
        if config.kind not in self.kinds:
            raise VitxError(f"method {self.name!r} does not apply to {config.kind!r} models "
                            f"(it works on: {', '.join(self.kinds)})")
        if "cls_token" in self.needs and layout.cls_index is None:
            raise VitxError(f"method {self.name!r} reads the class token, and this model has none")
        if "cls_token" in self.needs and config.pooling != "cls":
            others = [m.name for m in _METHODS.values()
                      if config.kind in m.kinds and not m.needs & {"cls_token", "trained_module"}]
            raise VitxError(f"method {self.name!r} explains through the class token, but this model's head reads "
                            f"{config.pooling!r}-pooled tokens, not the class token; methods that apply: "
                            f"{', '.join(others)}")
        if self.requires is not None:
            self.requires(config, {**self.defaults, **(params or {})})


_METHODS: dict[str, Method] = {}


def register(name: str, *, family: str, paper: str, needs=(), output: str = "tokens", cost: str,
             kinds=("vit",), requires: Callable | None = None) -> Callable:
    needs = frozenset(needs)
    assert needs <= NEEDS and output in ("tokens", "pixels") and name not in _METHODS, name

    def decorate(fn: Callable) -> Callable:
        defaults = {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}
        _METHODS[name] = Method(name, fn, family, paper, needs, output, cost, tuple(kinds), defaults, requires)
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
