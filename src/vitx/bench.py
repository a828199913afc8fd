"""What ``vitx bench`` writes from an :class:`~vitx.evaluate.Evaluation`: results.json, results.csv, a
Markdown leaderboard, one PNG per curve, a gallery PNG and one self-contained HTML report."""
from __future__ import annotations

import csv
import json
import re
from html import escape
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .errors import VitxError, one_line
from .evaluate import CURVES, REFERENCES, REGISTRIES, Evaluation, metric_info
from .report import STYLE, data_uri
from .viz import grid

UPSAMPLING = {"authors": "as the authors' evaluation does (bilinear, foreground above 0)", "nearest": "nearest"}
TABLE_STYLE = """
table { border-collapse: collapse; font-size: .85em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
"""


def write(evaluation: Evaluation, out: Path, command: str) -> dict[str, Path]:
    """Write every output of a benchmark run under ``out``; return them by kind."""
    results = evaluation.results
    files = {"json": out / "results.json", "csv": out / "results.csv", "leaderboard": out / "leaderboard.md",
             "gallery": out / "gallery.png", "report": out / "report.html"}
    save_rows(evaluation, out, command)
    _write_csv(results, files["csv"])
    note = f"{describe(results)}.\n\n" if results["variant"] in ("vqa", "detr", "clip") else ""
    files["leaderboard"].write_text(f"`{command}`\n\n{note}{leaderboard(results)}\n")
    plots = {title: curve_plot(evaluation.curves, title) for title in CURVES}
    plots = {title: image for title, image in plots.items() if image is not None}
    for title, image in plots.items():
        files[title] = out / ("curve_" + re.sub(r"\W+", "_", title) + ".png")
        image.save(files[title])
    picture = gallery(evaluation)
    picture.save(files["gallery"])
    files["report"].write_text(report(results, plots, picture, command), encoding="utf-8")
    return files


def save_rows(evaluation: Evaluation, out: Path, command: str) -> None:
    """results.json and curves.json: what ``read`` gives back to a resumed run."""
    (out / "results.json").write_text(json.dumps({**evaluation.results, "command": command}, indent=2) + "\n")
    (out / "curves.json").write_text(json.dumps(evaluation.curves) + "\n")


def read(out: Path) -> Evaluation | None:
    """The evaluation a previous run wrote under ``out`` (its rows and curves, for ``evaluate(previous=)``),
    or None when there is none."""
    files = out / "results.json", out / "curves.json"
    if not all(path.exists() for path in files):
        return None
    try:
        results, curves = (json.loads(path.read_text()) for path in files)
    except (OSError, ValueError) as err:
        raise VitxError(f"cannot read the previous run in {str(out)!r} ({one_line(err)}): "
                        "remove it or choose another --out") from None
    return Evaluation(results, curves)


def metric_columns(results: dict) -> list[str]:
    """The metrics present in any row, in the registries' order (the image benchmark's, the bi-modal one's, the
    detector's, the image-text one's)."""
    present = {key for row in results["methods"].values() for key in row}
    return [name for registry in REGISTRIES for name in registry if name in present]


def table(results: dict) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """The leaderboard as a header and rows of (text, best) cells: one row per method, one column per
    metric as mean ± standard error, arrows saying which direction is better, and the best method per
    column (reference rows aside) flagged."""
    columns = metric_columns(results)
    rows = results["methods"]
    best = {}
    for column in columns:
        values = [row[column] for name, row in rows.items() if name not in REFERENCES and row.get(column) is not None]
        if values:
            best[column] = (max if metric_info(column).higher_is_better else min)(values)
    unit = {"detr": "objects/s", "clip": "pairs/s"}.get(results["variant"], "images/s")
    header = ["method"] + [f"{c} {'↑' if metric_info(c).higher_is_better else '↓'}" for c in columns] + [unit]
    lines = []
    for name, row in rows.items():
        cells = [(f"{name} (reference)" if name in REFERENCES else name, False)]
        if "error" in row:
            lines.append(cells + [(f"failed: {row['error']}", False)] + [("", False)] * (len(header) - 2))
            continue
        for column in columns:
            value, sem = row.get(column), row.get(f"{column}_sem")
            text = "n/a" if value is None else f"{value:.3f}" + ("" if sem is None else f" ± {sem:.3f}")
            cells.append((text, value is not None and value == best.get(column)))
        speed = row.get("images_per_second")
        cells.append(("-" if speed is None else f"{speed:.1f}", False))
        lines.append(cells)
    return header, lines


def leaderboard(results: dict) -> str:
    """The leaderboard as a Markdown table, best values in bold."""
    header, rows = table(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"**{text}**" if best else text for text, best in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(results: dict, path: Path) -> None:
    columns = metric_columns(results)
    fields = ["method"] + [k for c in columns for k in (c, f"{c}_sem")] + ["seconds", "images_per_second", "error"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for name, row in results["methods"].items():
            writer.writerow({"method": name, **{k: v for k, v in row.items() if k in fields}})


def curve_plot(curves: dict, title: str) -> Image.Image | None:
    """One line per method of the mean curve ``title`` (a key of CURVES), or None when no method has it."""
    lines = {name: c[title] for name, c in curves.items() if title in c}
    if not lines:
        return None
    fig = Figure(figsize=(5.5, 3.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    for name, line in lines.items():
        ax.plot(line["x"], line["y"], label=name, linestyle="--" if name in REFERENCES else "-")
    metric = CURVES[title][0]
    similarity = title.startswith("similarity")
    unit = ("question words" if title.startswith("text") else
            "patch tokens (deleted)" if title.startswith("image") or "tokens" in title else "pixels")
    inserted = title.endswith(("insertion", "inserted"))
    ax.set_xlabel(f"fraction of patch tokens {'kept' if inserted else 'dropped'}" if similarity else
                  f"fraction of {unit} " + ("inserted" if inserted else "removed"))
    ax.set_ylabel("similarity of the (image, prompt) pair" if similarity else
                  "answer accuracy" if title.startswith(("image", "text")) else
                  "top-1 accuracy of the target" if "perturbation" in title else "target probability")
    higher = metric_info(metric).higher_is_better
    ax.set_title(f"{title} ({'higher' if higher else 'lower'} area is better)", fontsize=10)
    if not similarity:   # a similarity is in the model's own units, not in [0, 1]
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def gallery(evaluation: Evaluation) -> Image.Image:
    """The first explained images, each method's map beside them (on VQA pairs: the question and its answer)."""
    noun = "prompt" if evaluation.results.get("variant") == "clip" else "target"
    labels = [f"{noun}: {evaluation.class_names[t]}" for t in evaluation.targets.tolist()]
    if evaluation.questions:
        labels = [f"{q}\nanswer: {evaluation.class_names[t]}" for q, t in zip(evaluation.questions,
                                                                             evaluation.targets.tolist())]
    return grid(evaluation.images, evaluation.gallery, labels)


def describe(results: dict) -> str:
    """What a run scored, in words: its data and, on VQA pairs, the model's accuracy and the pairs left out of
    the image ground-truth scores; on a detector, its detections and how many match no object."""
    if results["variant"] == "detr":
        small, medium = (f"{share:.1%}" for share in results["size_thresholds"])
        return (f"{results['n']} multi-object shapes images (seed {results['data_seed']}), "
                f"{results['ground_truth_objects']} objects; {results['objects']} detections with a score above "
                f"{results['score_threshold']:g} explained, {results['unmatched']} of them matched to no object (box "
                f"IoU below {results['match_iou']:g} with the object of their class): left out of the per-object "
                f"scores, false positives in the segmentation AP. Masks: Otsu on the token grid, upsampled "
                f"{UPSAMPLING[results['upsample']]}. Sizes by mask area: small up to {small} of the image, medium up "
                f"to {medium}, large above")
    if results["variant"] == "clip":
        return (f"{results['n']} shapes_captions images (seed {results['data_seed']}), {results['explanations']} "
                f"(image, prompt) pairs: each image with the prompt naming its first object and the prompt naming its "
                f"second (mean similarity {results['similarity']:.3f}), scored on the named object")
    if results["variant"] != "vqa":
        return (f"{results['n']} shapes images ({results['variant']}, seed {results['seed']}), "
                f"{results['explanations']} explanations")
    return (f"{results['n']} shapes_vqa pairs (seed {results['data_seed']}), answer accuracy "
            f"{results['accuracy']:.3f}; {results['image_left_out']} pairs without a ground-truth object are left "
            "out of the image pointing game and energy")


def report(results: dict, plots: dict[str, Image.Image], picture: Image.Image, command: str) -> str:
    """A self-contained HTML page: the leaderboard, the curves and the gallery."""
    header, rows = table(results)
    head = "".join(f"<th>{escape(text)}</th>" for text in header)
    body = "".join("<tr>" + "".join(f"<td>{'<b>' + escape(t) + '</b>' if best else escape(t)}</td>" for t, best in row)
                   + "</tr>" for row in rows)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vitx bench: "
             f"{escape(results['model'])}</title><style>{STYLE}{TABLE_STYLE}</style></head><body>",
             f"<h1>vitx bench: {escape(results['model'])}</h1>",
             f"<p class=\"meta\">{escape(describe(results))}; mean ± standard error; best method per column in "
             "bold.<br>"
             f"<code>{escape(command)}</code></p>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", "<h2>Curves</h2><div class=\"row\">"]
    parts += [f"<figure><img alt=\"{escape(title)}\" src=\"{data_uri(image)}\"></figure>" for title, image in plots.items()]
    parts += ["</div><h2>Gallery</h2>", f"<img class=\"grid\" alt=\"explanations\" src=\"{data_uri(picture)}\">",
              "</body></html>\n"]
    return "\n".join(parts)
