"""HTML pages of a ``vitx explain`` run: per page of images, its grid, for a bi-modal model a table of each image's
question and answer, then every method's overlays with their target classes (a bi-modal model's overlays show the
question's words coloured by relevance). The pages show the PNG files written beside them (so a page stays small however many images and
methods there are); ``data_uri`` embeds an image instead, for pages that travel alone (``vitx bench``'s report)."""
from __future__ import annotations

import base64
import io
from html import escape

from PIL import Image

from .explanation import Explanation
from .naming import explanation_file, numbered
from .registry import get_method
from .viz import answer_lines
from .viz.text import plural

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin: 1.6em 0 .2em; }
.meta { color: #555; font-size: .9em; margin: 0 0 .6em; }
.grid { max-width: 100%; border: 1px solid #ddd; }
.row { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; text-align: center; font-size: .85em; }
nav a { margin-right: .5em; }
table.questions { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
table.questions td, table.questions th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
figure img { min-width: 192px; max-width: 320px; height: auto; image-rendering: pixelated; display: block; }
"""


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_pages(grids: list[str], names: list[str], explanations: list[Explanation], *, model: str,
                      rows_per_page: int, questions: list[str] | None = None) -> dict[str, str]:
    """HTML per page (index.html, index_002.html, ...) for ``explanations`` (one per method, all of the same
    images, called ``names``) of ``model``: page k shows the grid file ``grids[k]`` and the overlays of its
    ``rows_per_page`` images, named by :func:`vitx.naming.explanation_file`; with a bi-modal model's
    ``questions`` (one per image), each image's question and answer once, in a table under the grid. A detector's
    explanations have a row per object, counted and captioned as objects (class and score)."""
    unit = "object" if explanations[0].objects is not None else "image"
    files = ["index.html", *numbered("index", ".html", len(grids))[1:]]
    methods = ", ".join(exp.method for exp in explanations)
    nav = "" if len(files) == 1 else "<nav>pages: " + " ".join(
        f"<a href=\"{file}\">{k}</a>" for k, file in enumerate(files, 1)) + "</nav>"
    pages = {}
    for k, (file, picture) in enumerate(zip(files, grids)):
        rows = range(k * rows_per_page, min(len(names), (k + 1) * rows_per_page))
        shown = (f"{unit}s {rows[0] + 1}-{rows[-1] + 1} of {len(names)}" if len(files) > 1
                 else plural(len(names), unit))
        parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 f"<title>vitx: {escape(model)}</title><style>{STYLE}</style></head><body>",
                 f"<h1>vitx explanations of {escape(model)}</h1>", nav,
                 f"<p class=\"meta\">{shown}; methods: {escape(methods)}. "
                 "Red = most relevant to the target class, blue = least.</p>",
                 f"<img class=\"grid\" alt=\"grid of the explanations\" src=\"{escape(picture)}\">"]
        if questions is not None:
            parts.append(_questions(names, questions, explanations[0], rows))
        for exp in explanations:
            info = get_method(exp.method)
            parts.append(f"<h2 id=\"{escape(exp.method)}\">{escape(exp.method)}</h2>")
            parts.append(f"<p class=\"meta\">{escape(info.summary)}<br>{escape(info.family)} family · cost "
                         f"{escape(info.cost)} · {escape(info.paper)}</p><div class=\"row\">")
            for i in rows:
                source = escape(explanation_file(names[i], exp.method, ".png"))
                parts.append(f"<figure><img loading=\"lazy\" alt=\"{escape(names[i])} {escape(exp.method)}\" "
                             f"src=\"{source}\"><figcaption>{escape(names[i])}<br>{caption(exp, i)}</figcaption>"
                             "</figure>")
            parts.append("</div>")
        parts += [nav, "</body></html>\n"]
        pages[file] = "\n".join(part for part in parts if part)
    return pages


def caption(exp: Explanation, i: int) -> str:
    """Under an overlay: the explained class ("target: star"), or a detector's object's class and score."""
    if exp.objects is None:
        return f"target: <b>{escape(exp.target_name(i))}</b>"
    return f"detected: <b>{escape(exp.objects[i]['class'])}</b> ({exp.objects[i]['score']:.3f})"


def _questions(names: list[str], questions: list[str], exp: Explanation, rows: range) -> str:
    """A table row per image of ``rows``: its name, its question, and the answer (:func:`vitx.viz.answer_lines`)."""
    cells = [f"<tr><td>{escape(names[i])}</td><td>{escape(questions[i])}</td><td>"
             + "<br>".join(escape(line) for line in answer_lines(exp.logits[i], exp.class_name, int(exp.targets[i])))
             + "</td></tr>" for i in rows]
    return ("<table class=\"questions\"><tr><th>image</th><th>question</th><th>answer (probability)</th></tr>\n"
            + "\n".join(cells) + "</table>")
