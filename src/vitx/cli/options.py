"""What the commands share: argument types, the device and output checks, the ``--param`` values of methods, and
warnings in one line."""
from __future__ import annotations

import argparse
import ast
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import VitxError, one_line
from ..memory import parse_size
from ..registry import get_method
from ..viz.text import plural

DEVICES = ("cpu", "cuda", "mps", "xpu")  # the device types vitx can run a model on


def positive_int(text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1], e.g. a score threshold."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def literal(value: str):
    """``value`` read as a Python literal where it is one, else the string itself."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def method_param(text: str) -> tuple[str, str, object]:
    """METHOD.NAME=VALUE -> (method, name, value), the value read as a literal ('10' is 10, 'zeros' a string)."""
    match = re.fullmatch(r"([\w-]+)\.(\w+)=(.+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected METHOD.NAME=VALUE, e.g. rise.masks=1000; got {text!r}")
    method, name, value = match.groups()
    return method, name, literal(value)


def config_override(text: str) -> tuple[str, object]:
    """NAME=VALUE -> (name, value)."""
    match = re.fullmatch(r"(\w+)=(.+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, e.g. patch_size=2; got {text!r}")
    return match[1], literal(match[2])


def memory_size(text: str) -> int:
    """A size such as 4GB or 512MB, in bytes."""
    try:
        return parse_size(text)
    except VitxError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device(text: str) -> str:
    """A torch device of a type vitx runs models on, available on this machine (checked without touching it)."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (expected one of {', '.join(DEVICES)}, "
                                         "optionally with an index, e.g. cuda:1)") from None
    if parsed.type not in DEVICES:
        raise argparse.ArgumentTypeError(f"device {text!r} cannot run a model (expected one of {', '.join(DEVICES)})")
    backend = getattr(torch, parsed.type, None) if parsed.type != "mps" else torch.backends.mps
    available = parsed.type == "cpu" or bool(backend is not None and backend.is_available())
    if not available:
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine")
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.type != "cpu" and parsed.index >= count:
        raise argparse.ArgumentTypeError(f"device {text!r} does not exist: this machine has "
                                         f"{plural(count, parsed.type + ' device')}")
    return text


def comma_list(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise VitxError(f"expected comma-separated names, got {text!r}")
    return names


def method_params(given: list[tuple[str, str, object]], names: list[str], model, layout, run: str) -> dict[str, dict]:
    """``--param`` values as ``{method: {name: value}}``, each refused in one line before anything runs unless its
    method is among ``names`` (the methods this command ``run``s), has that parameter and, with its values,
    passes the method's check against ``model``."""
    params: dict[str, dict] = {}
    for method, name, value in given:
        get_method(method)
        if method not in names:
            raise VitxError(f"--param {method}.{name}: {method!r} is not among the methods {run}")
        params.setdefault(method, {})[name] = value
    for method, values in params.items():
        info = get_method(method)
        try:
            info.check_model(model, layout, info.bind(values))
        except VitxError as err:
            shown = " ".join(f"{method}.{name}={value!r}" for name, value in values.items())
            raise VitxError(f"--param {shown}: {one_line(err)}") from None
    return params


@contextmanager
def output_dir(path: Path):
    """``path`` created (with its missing parents) and checked writable, for the body of the ``with``; if the
    body fails (or is interrupted) before writing anything there, what this created is removed again."""
    if path.exists() and not path.is_dir():
        raise VitxError(f"--out {str(path)!r} exists and is not a directory")
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except OSError as err:
            raise VitxError(f"cannot write to --out {str(path)!r} ({err.strerror or one_line(err)})") from None
        yield path
    except BaseException:
        for folder in created:  # deepest first; one that holds anything stays, and so do its parents
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextmanager
def one_line_warnings():
    """Warnings raised in the body printed as ``vitx: warning: <message>`` on one line of stderr, each distinct
    message once (e.g. the words outside a model's vocabulary, met by every method's run)."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = one_line(message)
        if text not in shown:
            shown.add(text)
            print(f"vitx: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
