"""A request's work: its fields checked against the model before anything runs (every refusal one line), then the
predictions, or the explanation job that calls :func:`vitx.explain` once per method, and the job's ``vitx explain``
command line."""
from __future__ import annotations

import json
import re
import shlex
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import VitxError, one_line
from ..explain import explain, questions
from ..model import Model, evaluating
from ..objects import find_objects
from ..prompts import encode_prompts, prompt_pairs, similarities
from ..registry import Method, get_method, method_names
from ..targets import resolve_targets
from .catalogue import Catalogue, Entry, UnknownName
from .jobs import Job
from .uploads import BadRequest

TOP = 5   # predictions shown


@dataclass
class Request:
    name: str
    entry: Entry
    model: Model
    kind: str
    x: torch.Tensor                    # (1, 3, H, W), the model's input
    text: list[str] | None             # a VQA model's question (one), an image-text model's prompts
    image_name: str
    target: int | str | None = None
    methods: tuple[Method, ...] = ()
    params: dict | None = None
    warnings: list[str] | None = None   # what vitx warned of while reading the input (e.g. words it does not know)


def prepare(catalogue: Catalogue, name: str, picture: Image.Image, image_name: str, text: str | None) -> Request:
    """The model, its input and its text, checked; :class:`UnknownName` or :class:`BadRequest`."""
    model, kind = catalogue.model(name), catalogue.kind(name)
    entry = catalogue.entry(name)
    text = (text or "").strip()
    prompts, said = None, []
    try:
        with recorded(said):
            x = model.preprocess([picture])
            if kind == "clip":
                prompts = [line.strip() for line in text.splitlines() if line.strip()]
                encode_prompts(model, prompts or None)
            elif kind == "vqa":
                prompts = [" ".join(text.split())] if text else None
                questions(model, prompts, 1)
    except VitxError as err:
        raise BadRequest(400, one_line(err)) from None
    return Request(name, entry, model, kind, x, prompts, image_name, warnings=said)


@contextmanager
def recorded(into: list[str]):
    """What vitx warns of in the block, appended to ``into`` (one line each, once) for the page, not the server's log.
    (The warnings filter is the process's: a warning of another thread meanwhile may land here too.)"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    into += [line for line in dict.fromkeys(one_line(str(w.message)) for w in caught) if line not in into]


def with_explanation(request: Request, methods: str | None, target: str | None, params: str | None) -> Request:
    """``request`` with the methods (comma-separated names), target and parameters (JSON) to explain, each checked
    against the model: unknown methods 404, the rest 400 with the reason."""
    names = [part.strip() for part in (methods or "").split(",") if part.strip()]
    if not names:
        raise BadRequest(400, "no method given: name one or more, comma-separated, in 'methods'")
    unknown = [method for method in names if method not in method_names()]
    if unknown:
        raise UnknownName(f"unknown method {unknown[0]!r}; see /api/methods for the known ones")
    chosen = tuple(get_method(method) for method in dict.fromkeys(names))
    given = parse_params(params, [info.name for info in chosen])
    model = request.model
    layout = model.layout(request.x)
    bound = {}
    try:
        for info in chosen:
            bound[info.name] = info.bind(given.get(info.name, {}))
            info.check_model(model, layout, bound[info.name])
        value = parse_target(request, target)
    except VitxError as err:
        raise BadRequest(400, one_line(err)) from None
    request.methods, request.target, request.params = chosen, value, {k: v for k, v in given.items() if v}
    return request


def parse_params(text: str | None, methods: list[str]) -> dict[str, dict]:
    if not text or not text.strip():
        return {}
    try:
        values = json.loads(text)
    except ValueError as err:
        raise BadRequest(400, f"params is not JSON ({one_line(err)})") from None
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise BadRequest(400, 'params must be a JSON object {"method": {"parameter": value}}')
    for method in values:
        if method not in methods:
            raise BadRequest(400, f"params names method {method!r}, which is not among the methods explained")
    return values


def parse_target(request: Request, text: str | None) -> int | str | None:
    """The target as vitx.explain takes it for this model, checked: a class index or name (an answer of a VQA
    model, a prompt of an image-text model by index or text, a class of a detector, whose detections of that class
    are explained)."""
    text = (text or "").strip()
    if not text:
        return None
    value: int | str = int(text) if re.fullmatch(r"[+-]?\d+", text) else text
    model = request.model
    if request.kind == "clip":
        prompt_pairs(model, value, 1, tuple(request.text))
        return value
    index = int(resolve_targets(value, 1, model)[0])
    return model.config.class_names[index] if request.kind == "detr" else value


def predictions(request: Request) -> dict:
    """The top predictions (a detector's: its detections, by score) and a detector's objects."""
    model, x = request.model, request.x.to(request.model.device)
    objects = None
    with request.entry.running, torch.no_grad(), evaluating(model), recorded(request.warnings):
        if request.kind == "detr":
            objects = find_objects(model, x, None, None, 1).rows(model.config.class_names)
            top = sorted(objects, key=lambda row: -row["score"])[:TOP]
            rows = [{"index": row["label"], "class": row["class"], "probability": row["score"]} for row in top]
        else:
            if request.kind == "clip":
                logits, names = similarities(model, x, encode_prompts(model, request.text)[0], 1), request.text
            else:
                text = None if request.kind == "classifier" else model.encode_text(request.text)
                logits = model(x) if text is None else model(x, text)
                names = [model.class_name(k) for k in range(logits.shape[-1])]
            scores = logits[0].float()   # a multi-label model's classes each have their own sigmoid probability
            probabilities = scores.sigmoid() if model.config.multi_label else scores.softmax(-1)
            best = probabilities.topk(min(TOP, len(probabilities)))
            rows = [{"index": int(k), "class": names[int(k)], "probability": round(float(p), 4)}
                    for p, k in zip(best.values, best.indices)]
    objects = None if objects is None else [{"query": row["query"], "class": row["class"], "score": row["score"],
                                             "box": row["box"]} for row in objects]
    return {"model": request.name, "predictions": rows, "objects": objects, "warnings": request.warnings}


def rows_per_method(request: Request) -> int:
    if request.kind == "clip":
        return len(request.text) if request.target is None else 1
    return 1


def explanation_job(request: Request) -> Job:
    """The job that explains ``request`` with each of its methods in turn (a detector's objects found once first)."""

    def work(job: Job) -> None:
        with request.entry.running:
            target = request.target
            if request.kind == "detr":
                target = find_objects(request.model, request.x, None if target is None else [target], None, 32)
                job.total = len(target) * len(request.methods)
            for info in request.methods:
                job.check()
                try:
                    with recorded(job.warnings):
                        exp = explain(request.model, request.x, method=info.name, target=target, text=request.text,
                                      progress=job.advance, **request.params.get(info.name, {}))
                except VitxError as err:
                    job.results.append({"method": info.name, "exp": None, "error": one_line(err)})
                    continue
                if job.target is None and len(exp) and request.kind != "detr":
                    job.target = {"index": int(exp.targets[0]), "class": exp.target_name(0)}
                job.results.append({"method": info.name, "exp": exp,
                                    "error": None if len(exp) else "no detection with a score above 0.5"})

    return Job(work, rows_per_method(request) * len(request.methods), command_line(request), request.name,
               warnings=list(request.warnings))


def command_line(request: Request) -> str:
    """The ``vitx explain`` command that gives the same maps."""
    parts = ["vitx", "explain", request.image_name, "--model", request.name,
             "--method", ",".join(info.name for info in request.methods)]
    if request.target is not None:
        parts += ["--target", str(request.target)]
    for line in request.text or ():
        parts += ["--text", line]
    for method, values in (request.params or {}).items():
        parts += [f"--param={method}.{key}={value!r}" if isinstance(value, str) else f"--param={method}.{key}={value}"
                  for key, value in values.items()]
    return " ".join(shlex.quote(part) for part in parts + ["--out", "out/serve"])
