"""What a run of methods will cost, read from the registry's ``cost`` strings ("1F+1B", "steps×(1F+1B)",
"masks×F + 1F", "(1+P)F", ...): forward (F) and backward (B) passes per image, with the method's parameters, P
(the patches) and ``windows`` (occlusion's windows) filled in. A term that names anything else (a max-flow, an
explainer's pass, K masks left after clustering) is reported as it is written."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from ..layout import TokenLayout
from ..registry import Method
from ..viz.text import plural


@dataclass(frozen=True)
class Passes:
    forward: float = 0
    backward: float = 0

    def __add__(self, other):
        other = _passes(other)
        return Passes(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, other):
        if isinstance(other, Passes):
            raise ValueError("passes times passes")
        return Passes(self.forward * other, self.backward * other)

    __radd__, __rmul__ = __add__, __mul__


def _passes(value) -> Passes:
    if isinstance(value, Passes):
        return value
    if value == 0:
        return Passes()
    raise ValueError(f"a bare number {value} in a sum of passes")


def method_cost(info: Method, params: dict, layout: TokenLayout) -> tuple[Passes, list[str]]:
    """Passes per image of ``info`` with ``params`` (bound), and the terms of its cost string not counted."""
    from ..methods.perturbation import occlusion_windows
    names = {**{k: v for k, v in params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
             "F": Passes(1, 0), "B": Passes(0, 1), "P": layout.num_patches}
    if "window" in params and "stride" in params:
        try:
            names["windows"] = occlusion_windows(layout.grid, params["window"], params["stride"]).shape[0]
        except Exception:  # a window the method will refuse: nothing to count
            pass
    # notes in words, "(CPU)" or "(the model, reorganised)", out first; then the cost ends at its first comma
    text = re.sub(r"\s*\([A-Za-z][^()0-9+×]*\)", "", info.cost).split(",")[0]
    total, unknown = Passes(), []
    for term in _terms(text):
        expression = re.sub(r"(\d|\))\s*(?=[A-Za-z(])", r"\1*", term.replace("×", "*"))
        try:
            total = total + _evaluate(ast.parse(expression, mode="eval").body, names)
        except (SyntaxError, ValueError, KeyError, TypeError):
            unknown.append(term)
    return total, unknown


def _terms(text: str) -> list[str]:
    """``text`` split at the + signs outside parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "+" and depth == 0:
            terms.append(text[start:i].strip())
            start = i + 1
    return [term for term in terms + [text[start:].strip()] if term]


def _evaluate(node, names: dict):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError(f"cannot count {ast.dump(node)}")


def estimate(methods: list[tuple[Method, dict]], images: int, layout: TokenLayout, unit: str = "image") -> str:
    """One line: the forward and backward passes of ``methods`` (each with its bound parameters) on ``images``
    images (``unit="object"``: a detector's objects, each explained as one row), the costliest methods' shares, and
    the terms not counted."""
    costs = {info.name: method_cost(info, params, layout) for info, params in methods}
    total = sum((passes for passes, _ in costs.values()), Passes())
    work = {name: passes.forward + 2 * passes.backward for name, (passes, _) in costs.items()}  # B ≈ 2 F
    whole = sum(work.values()) or 1
    top = sorted(work, key=work.get, reverse=True)[:3]
    shares = ", ".join(f"{name} {work[name] / whole:.0%}" for name in top if work[name] / whole >= 0.05)
    skipped = "; ".join(f"{name}: {' + '.join(terms)}" for name, (_, terms) in costs.items() if terms)
    return (f"estimated cost of {plural(len(methods), 'method')} on {plural(images, unit)}: "
            f"{_count(total.forward * images)} forward and "
            f"{_count(total.backward * images)} backward passes" + (f" (most in {shares})" if shares else "")
            + (f"; not counted: {skipped}" if skipped else ""))


def _count(value: float) -> str:
    return f"{round(value):,}"
