"""A self-contained HTML page of explanations: the side-by-side grid, then every method's overlays with
their target classes. Images are embedded as base64 PNGs, so the page can be moved or sent alone."""
from __future__ import annotations

import base64
import io
from html import escape

from PIL import Image

from .explanation import Explanation
from .registry import get_method

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin: 1.6em 0 .2em; }
.meta { color: #555; font-size: .9em; margin: 0 0 .6em; }
.grid { max-width: 100%; border: 1px solid #ddd; }
.row { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; text-align: center; font-size: .85em; }
figure img { min-width: 192px; max-width: 320px; height: auto; image-rendering: pixelated; display: block; }
"""


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_page(grid: Image.Image, names: list[str], explanations: list[Explanation], *, model: str) -> str:
    """HTML for ``explanations`` (one per method, all of the same images, called ``names``) of ``model``."""
    methods = ", ".join(exp.method for exp in explanations)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>vitx: {escape(model)}</title><style>{STYLE}</style></head><body>",
             f"<h1>vitx explanations of {escape(model)}</h1>",
             f"<p class=\"meta\">{len(names)} image(s); methods: {escape(methods)}. "
             "Red = most relevant to the target class, blue = least.</p>",
             f"<img class=\"grid\" alt=\"grid of all explanations\" src=\"{data_uri(grid)}\">"]
    for exp in explanations:
        info = get_method(exp.method)
        parts.append(f"<h2 id=\"{escape(exp.method)}\">{escape(exp.method)}</h2>")
        parts.append(f"<p class=\"meta\">{escape(info.summary)}<br>{escape(info.family)} family · cost "
                     f"{escape(info.cost)} · {escape(info.paper)}</p><div class=\"row\">")
        for i, name in enumerate(names):
            caption = f"{escape(name)}<br>target: <b>{escape(exp.target_name(i))}</b>"
            parts.append(f"<figure><img alt=\"{escape(name)} {escape(exp.method)}\" src=\"{data_uri(exp.overlay(i))}\">"
                         f"<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
