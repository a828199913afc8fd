"""The ``vitx`` command: explain images, benchmark methods, list the methods and the zoo, train zoo models.

Errors the user can fix (:class:`~vitx.VitxError`, bad arguments) end in one line on stderr and exit
status 2; anything unexpected in one line naming it and status 1 (``--debug`` shows the traceback).
``vitx explain`` checks its images, model, methods, target and output directory before it creates
anything.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import VitxError, one_line
from .explain import explain, resolve_targets
from .explanation import Explanation
from .images import read_image
from .loading import load_model
from .registry import Method, get_method, method_names, methods
from .report import explanation_page
from .viz import gradcat_tree, grid, tile
from .zoo import ZOO_DIR, models

OVERLAY_SIZE = 256  # overlays are enlarged by a whole factor to at least this many pixels


class Parser(argparse.ArgumentParser):
    """argparse whose errors are raised as one-line VitxErrors instead of printed with the usage."""

    def error(self, message: str):
        raise VitxError(f"{message} (see `{self.prog} --help`)")


def positive_int(text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def literal(value: str):
    """``value`` read as a Python literal where it is one, else the string itself."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def method_param(text: str) -> tuple[str, str, object]:
    """METHOD.NAME=VALUE -> (method, name, value)."""
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


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = Parser(prog="vitx", description="Explain the predictions of Vision Transformers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("explain", parents=[common], help="explain images with one or more methods",
                            description="Explain every image with every method; write overlays, maps (.npy), "
                                        "grid.png and index.html into --out.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True,
                   help="zoo name (see `vitx models`), timm:<name>, hf:<directory> or a .safetensors file")
    p.add_argument("--arch", help="architecture of a .safetensors file with timm's keys, e.g. vit_small_patch16_224")
    p.add_argument("--weights", help="local weights file for a timm:<name> model")
    p.add_argument("--method", required=True, help="comma-separated method names (see `vitx methods`), or 'all'")
    p.add_argument("--target", help="class index or name to explain (default: each image's predicted class)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per chunk (default: 32)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(run=run_explain)

    for name, rows in (("methods", "the explanation methods"), ("models", "the zoo models")):
        p = commands.add_parser(name, parents=[common], help=f"list {rows}", description=f"List {rows}.")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(run=run_methods if name == "methods" else run_models)

    p = commands.add_parser("bench", parents=[common], help="score methods on shapes images with known ground truth",
                            description="Run every method on the same N fresh shapes images and compute every "
                                        "metric; write results.json, results.csv, leaderboard.md, curve plots, "
                                        "gallery.png and report.html into --out.")
    p.add_argument("--model", required=True, help="a model trained on shapes: zoo name, or a file as for explain")
    p.add_argument("--arch", help="architecture of a .safetensors file with timm's keys")
    p.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default), which adds "
                                                    "the reference rows random and ground-truth")
    p.add_argument("--metrics", help="comma-separated metric names (default: every metric that applies)")
    p.add_argument("--n", type=positive_int, default=500, help="number of shapes images (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="data seed, also seeds stochastic methods (default: 0)")
    p.add_argument("--sanity-images", type=positive_int, default=100,
                   help="images for the randomisation check, which re-runs each method once per block "
                        "(default: the first 100)")
    p.add_argument("--param", action="append", default=[], type=method_param, metavar="METHOD.NAME=VALUE",
                   help="a parameter of one method, e.g. rise.masks=1000 (repeatable; see `vitx methods --json`)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of --out's previous run for the methods it scored on the same images, "
                        "seed, parameters and metrics; run only the others")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per chunk (default: 32)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(run=run_bench)

    p = commands.add_parser("generate", parents=[common], help="draw shapes images with a trained generator",
                            description="Write samples of a GAN generator trained by `vitx train` (PNG files and "
                                        "a grid).")
    p.add_argument("--model", default="shapes-nest-gan", help="zoo name or file (default: shapes-nest-gan)")
    p.add_argument("--n", type=positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent vectors (default: 0)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(run=run_generate)

    p = commands.add_parser("train", parents=[common], help="train a zoo model",
                            description="Train a zoo model (see `vitx models`) and write its checkpoint and card.")
    p.add_argument("name", help="zoo model name")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--out", type=Path, default=ZOO_DIR, help="output directory (default: the zoo directory)")
    p.add_argument("--config", action="append", default=[], type=config_override, metavar="NAME=VALUE",
                   help="override a field of the architecture's configuration, e.g. patch_size=2 or "
                        "\"depths=(1, 2, 8)\" (repeatable; classifiers)")
    p.set_defaults(run=run_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    debug = False
    try:
        args = build_parser().parse_args(argv)
        debug = args.debug
        return args.run(args)
    except SystemExit as done:  # --help
        return done.code or 0
    except KeyboardInterrupt:
        print("vitx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away, e.g. `vitx methods | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if debug:
            traceback.print_exc()
        if isinstance(err, VitxError):
            print(f"vitx: error: {one_line(err)}", file=sys.stderr)
            return 2
        print(f"vitx: error: unexpected {type(err).__name__}: {one_line(err)}"
              f"{'' if debug else ' (run with --debug to see the traceback)'}", file=sys.stderr)
        return 1


# ---- explain ---------------------------------------------------------------------------------------

def run_explain(args) -> int:
    if args.weights and not args.model.startswith("timm:"):
        raise VitxError("--weights is for timm:<name> models only")
    wanted = None if args.method == "all" else [get_method(name) for name in comma_list(args.method)]
    names = image_names(args.images)
    pictures = [read_image(path) for path in args.images]
    device = check_device(args.device)
    model = load_model(args.model, arch=args.arch, weights=args.weights, device=device)
    x = model.preprocess(pictures)
    layout = model.layout(x)
    if wanted is None:
        wanted = applicable_methods(model.config, layout)
    else:
        for info in wanted:
            info.check(model.config, layout)
    target = None if args.target is None else int(args.target) if re.fullmatch(r"-?\d+", args.target) else args.target
    targets = resolve_targets(target, len(pictures), model)
    out = make_out_dir(args.out)

    explanations = []
    with tqdm(total=len(wanted) * len(pictures), unit="image", desc="explaining", delay=1) as bar:
        for info in wanted:
            bar.set_postfix_str(info.name, refresh=False)
            explanations.append(explain(model, x, method=info.name, target=targets, batch_size=args.batch_size))
            bar.update(len(pictures))

    scale = -(-OVERLAY_SIZE // max(x.shape[-2:]))
    for exp in explanations:
        for i, name in enumerate(names):
            exp.overlay(i, scale=scale).save(out / f"{name}_{exp.method}.png")
            np.save(out / f"{name}_{exp.method}.npy", exp.maps[i].cpu().numpy())
    trees = []
    for exp in explanations:
        if exp.method == "gradcat":
            trees = write_gradcat_trees(model, x, names, targets, exp, out, args.batch_size)
    first = explanations[0]
    labels = [row_label(name, first.logits[i], first.target_name(i) if targets is not None else None, model)
              for i, name in enumerate(names)]
    picture = grid(first.images, {exp.method: exp.maps for exp in explanations}, labels)
    picture.save(out / "grid.png")
    page = explanation_page(picture, names, explanations, model=model.config.name or args.model)
    (out / "index.html").write_text(page, encoding="utf-8")
    print(f"wrote {len(names) * len(explanations)} overlays (<image>_<method>.png) and maps (.npy) to {out}/\n"
          f"grid: {out / 'grid.png'}\npage: {out / 'index.html'}" + (f"\nGradCAT trees: {len(trees)}" if trees else ""))
    return 0


TREE_CLASSES = 3


def write_gradcat_trees(model, x, names, targets, first: Explanation, out: Path, batch_size: int) -> list[Path]:
    """<image>_gradcat_tree.png: GradCAT's path for the --target class, or for each of the top 3 predicted;
    ``first`` is the GradCAT explanation already computed for the --target or top-1 class."""
    probabilities = first.logits.float().softmax(-1)
    classes = first.targets[:, None]
    if targets is None:
        runners_up = probabilities.topk(min(TREE_CLASSES, probabilities.shape[1])).indices[:, 1:]
        classes = torch.cat([classes, runners_up], 1)
    paths = [first.details["path"]] + [explain(model, x, "gradcat", target=classes[:, k],
                                               batch_size=batch_size).details["path"]
                                       for k in range(1, classes.shape[1])]
    images = model.denormalize(x).cpu()
    written = []
    for i, name in enumerate(names):
        titles = [f"{model.class_name(int(c))} ({probabilities[i, c]:.2f})" for c in classes[i]]
        written.append(out / f"{name}_gradcat_tree.png")
        gradcat_tree(images[i], [path[i] for path in paths], titles).save(written[-1])
    return written


def image_names(paths: list[str]) -> list[str]:
    """File stems, which name the outputs; two images with the same stem would overwrite each other."""
    names = [Path(path).stem for path in paths]
    for name in names:
        if names.count(name) > 1:
            raise VitxError(f"two images are named {name!r}: outputs are named after the file, rename one")
    return names


def check_device(name: str | None) -> str | None:
    if name is not None:
        try:
            torch.empty(0, device=name)
        except (RuntimeError, AssertionError) as err:
            raise VitxError(f"device {name!r} cannot be used here ({one_line(err)})") from None
    return name


def applicable_methods(config, layout) -> list[Method]:
    """Every registered method that applies to the model; the others are named on stderr."""
    usable = []
    for name in method_names():
        info = get_method(name)
        try:
            info.check(config, layout)
            usable.append(info)
        except VitxError as err:
            print(f"vitx: skipped: {one_line(err)}", file=sys.stderr)
    if not usable:
        raise VitxError("no registered method applies to this model")
    return usable


def make_out_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise VitxError(f"--out {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise VitxError(f"cannot write to --out {str(path)!r} ({err.strerror or one_line(err)})") from None
    return path


def row_label(name: str, logits: torch.Tensor, target: str | None, model) -> str:
    """The image's name, its predicted class with its probability, and the explained class if chosen."""
    logits = logits.float()
    probs = logits.sigmoid() if model.config.multi_label else logits.softmax(-1)
    k = int(probs.argmax())
    label = f"{name}\npredicted: {model.class_name(k)} ({float(probs[k]):.0%})"
    return label if target is None else f"{label}\ntarget: {target}"


# ---- bench -----------------------------------------------------------------------------------------

def run_bench(args) -> int:
    from . import bench
    from .data import shapes
    from .evaluate import evaluate, method_list, metric_list
    if args.seed < 0:
        raise VitxError(f"--seed must be 0 or more, got {args.seed}")
    methods = "all" if args.methods == "all" else comma_list(args.methods)
    metrics = None if args.metrics is None else comma_list(args.metrics)
    model = load_model(args.model, arch=args.arch, device=check_device(args.device))
    size = model.config.image_size
    if size[0] != size[1]:
        raise VitxError(f"vitx bench draws square shapes images; this model takes {size[0]}x{size[1]}")
    data = shapes(n=args.n, seed=args.seed, variant="multi" if model.config.multi_label else "single",
                  image_size=size[0])
    params = {}
    for method, name, value in args.param:
        get_method(method).bind({name: value})  # an unknown method or parameter is refused before anything runs
        params.setdefault(method, {})[name] = value
    methods, metrics = method_list(model, data, methods, params), metric_list(data, metrics)  # refused before writing
    for method in params:
        if method not in methods:
            raise VitxError(f"--param {method}...: {method!r} is not among the methods benchmarked")
    out = make_out_dir(args.out)
    command = " ".join(["vitx bench --model", args.model, *(["--arch", args.arch] if args.arch else []),
                        "--methods", args.methods, *(["--metrics", args.metrics] if args.metrics else []),
                        *(f"--param {m}.{k}={v!r}" for m, k, v in args.param),
                        f"--n {args.n} --seed {args.seed} --sanity-images {args.sanity_images} --out {args.out}"])
    previous = bench.read(out) if args.resume else None
    evaluation = evaluate(model, data, methods, metrics, params=params, batch_size=args.batch_size, seed=args.seed,
                          sanity_images=args.sanity_images, previous=previous, progress=True,
                          scored=lambda so_far: bench.save_rows(so_far, out, command))
    files = bench.write(evaluation, out, command)
    print(bench.leaderboard(evaluation.results))
    failed = [name for name, row in evaluation.results["methods"].items() if "error" in row]
    for name in failed:
        print(f"vitx: {name} failed: {evaluation.results['methods'][name]['error']}", file=sys.stderr)
    print(f"wrote {', '.join(path.name for path in files.values())} to {out}/")
    return 0


def comma_list(text: str) -> list[str]:
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise VitxError(f"expected comma-separated names, got {text!r}")
    return names


# ---- methods, models, train ------------------------------------------------------------------------

def run_methods(args) -> int:
    return print_rows(methods(), ["name", "family", "kinds", "needs", "cost", "paper"], args.json)


def run_models(args) -> int:
    return print_rows(models(), ["name", "kind", "architecture", "dataset", "accuracy", "file"], args.json)


def print_rows(rows: list[dict], columns: list[str], as_json: bool) -> int:
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    cells = [[cell_text(row[column]) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    for line in [columns, ["-" * width for width in widths], *cells]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    return 0


def cell_text(value) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def run_generate(args) -> int:
    from .gan import load_generator, sample
    if args.seed < 0:
        raise VitxError(f"--seed must be 0 or more, got {args.seed}")
    generator, _ = load_generator(args.model)
    out = make_out_dir(args.out)
    images = sample(generator, args.n, args.seed)
    for i, image in enumerate(images):
        tile(image[None], columns=1).save(out / f"sample_{i:03d}.png")
    tile(images).save(out / "samples.png")
    print(f"wrote {args.n} samples (sample_<i>.png) and samples.png to {out}/")
    return 0


def run_train(args) -> int:
    from .train import train
    options = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
               "config": dict(args.config) or None}
    metrics = train(args.name, out_dir=args.out, **{key: value for key, value in options.items() if value is not None})
    print(f"wrote {args.out / args.name}.safetensors and its model card {args.name}.md\n"
          f"test metrics: {', '.join(f'{key} {value}' for key, value in metrics.items())}")
    return 0
