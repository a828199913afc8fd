"""Text for drawings: fonts that cover the names users give their files (CJK included where such a font is
installed; a missing glyph is drawn as a box without a warning), text widths in pixels, wrapping to a width, and
lettering a pixel sheet at fixed positions."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.transforms import IdentityTransform
from PIL import Image

DPI = 100
# Tried in this order for each character: DejaVu Sans (matplotlib's own), fonts with CJK glyphs where installed,
# and matplotlib's Last Resort font, which draws a box for any code point.
FAMILIES = ("DejaVu Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "Source Han Sans", "WenQuanYi Zen Hei",
            "Droid Sans Fallback", "Arial Unicode MS", "PingFang SC", "Hiragino Sans", "Microsoft YaHei", "SimHei",
            "Last Resort High-Efficiency")


@lru_cache(maxsize=None)
def font(size: float, bold: bool = False) -> FontProperties:
    """Font properties of ``size`` points with every installed family of :data:`FAMILIES` as a fallback (bold:
    DejaVu Sans alone, the only one certain to have a bold face)."""
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    families = [name for name in FAMILIES[:1 if bold else None] if name in installed] or ["sans-serif"]
    return FontProperties(family=families, size=size, weight="bold" if bold else "normal")


def plural(count: int, word: str) -> str:
    """'1 overlay', '2 overlays'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


@contextmanager
def quiet_glyphs():
    """Silence matplotlib's warning about glyphs that no installed font has (they are drawn as boxes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield


@lru_cache(maxsize=4096)
def _char_width(char: str, size: float, bold: bool) -> float:
    with quiet_glyphs():
        return RendererAgg(1, 1, DPI).get_text_width_height_descent(char, font(size, bold), ismath=False)[0]


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width of ``text`` in pixels at :data:`DPI` (the sum of its characters' widths: kerning ignored)."""
    return sum(_char_width(char, size, bold) for char in text)


def wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """``text``'s lines, each broken at spaces (or inside a word longer than ``width``) to fit ``width`` pixels."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, size, bold) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # a word wider than the line is cut where it reaches the edge
                if line and text_width(line + char, size, bold) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def letter(sheet: np.ndarray, texts: list[tuple]) -> Image.Image:
    """``sheet`` (H, W, 3) uint8 with ``texts`` written at their pixel positions: each ``(x, y, text, size, bold,
    align)`` with y the baseline from the top, optionally a seventh entry, its colour (black by default). The text
    is drawn alone on a white figure of the same size (no layout engine, no image artists) and laid over the sheet
    by the darker of the two: neither covers the other's pixels."""
    height, width = sheet.shape[:2]
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    for x, y, text, size, bold, align, *colour in texts:
        fig.text(x, height - y, text, fontproperties=font(size, bold), ha=align, va="baseline",
                 color=colour[0] if colour else "black", transform=IdentityTransform())
    canvas = FigureCanvasAgg(fig)
    with quiet_glyphs():
        canvas.draw()
    lettering = np.asarray(canvas.buffer_rgba())[:height, :width, :3]
    return Image.fromarray(np.minimum(sheet, lettering))
