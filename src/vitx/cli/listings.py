"""``vitx methods``, ``vitx models``, ``vitx generate`` and ``vitx train``."""
from __future__ import annotations

import json

from ..errors import VitxError
from ..registry import methods
from ..viz import tile
from ..zoo import models
from ..viz.text import plural
from .options import output_dir



def run_methods(args) -> int:
    return print_rows(methods(), ["name", "family", "kinds", "needs", "cost", "memory", "paper"], args.json)


def run_models(args) -> int:
    return print_rows(models(), ["name", "kind", "architecture", "dataset", "quality", "file"], args.json)


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
    from ..training.gan import load_generator, sample
    if args.seed < 0:
        raise VitxError(f"--seed must be 0 or more, got {args.seed}")
    generator, _ = load_generator(args.model)
    images = sample(generator, args.n, args.seed)
    with output_dir(args.out) as out:
        for i, image in enumerate(images):
            tile(image[None], columns=1).save(out / f"sample_{i:03d}.png")
        tile(images).save(out / "samples.png")
    print(f"wrote {plural(args.n, 'sample')} (sample_<i>.png) and samples.png to {out}/")
    return 0


def run_train(args) -> int:
    from ..training import train
    options = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size,
               "config": dict(args.config) or None, "workers": args.workers, "device": args.device}
    metrics = train(args.name, out_dir=args.out, **{key: value for key, value in options.items() if value is not None})
    shown = {key: value for key, value in metrics.items() if key != "types"}  # a VQA model's: accuracy per type
    shown.update({f"{kind} accuracy": m["accuracy"] for kind, m in metrics.get("types", {}).items()})
    print(f"wrote {args.out / args.name}.safetensors and its model card {args.name}.md\n"
          f"test metrics: {', '.join(f'{key} {value}' for key, value in shown.items())}")
    return 0
