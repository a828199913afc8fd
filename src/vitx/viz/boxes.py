"""A detected object's box and label ("class score") drawn over a picture of its image, e.g. the heatmap overlay of
that object's explanation: a white frame edged in black (seen over every colour of a heatmap) and, above its top
left corner (inside it when there is no room above), black text on a white tag. Sizes follow the picture's, so the
label reads at ``Explanation.save``'s scale (256 pixels for a 64-pixel input) and still fits a 64-pixel picture."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .text import DPI, letter, text_width

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def label_size(picture: Image.Image) -> float:
    """The label's size in points: a 25th of the picture's longer side, between 6 and 14."""
    return min(14.0, max(6.0, max(picture.size) / 25))


def boxed(picture: Image.Image, box, label: str | None, input_size: tuple[int, int]) -> Image.Image:
    """``picture`` (a drawing of an image of ``input_size`` (height, width), at any scale) with ``box`` (x0, y0, x1,
    y1) in that image's pixels framed and tagged with ``label`` (None: the frame alone); parts outside the picture
    are clipped."""
    picture = picture.convert("RGB")
    width, height = picture.size
    scale = (width / input_size[1], height / input_size[0])
    x0, y0, x1, y1 = (float(v) * scale[k % 2] for k, v in enumerate(box))
    left, top = min(max(math.floor(x0), 0), width - 1), min(max(math.floor(y0), 0), height - 1)
    right, bottom = max(min(math.ceil(x1) - 1, width - 1), left), max(min(math.ceil(y1) - 1, height - 1), top)
    line = max(1, round(max(width, height) / 128))
    draw = ImageDraw.Draw(picture)
    draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], outline=BLACK, width=line + 2)
    draw.rectangle([left, top, right, bottom], outline=WHITE, width=line)
    if label is None:
        return picture

    size = label_size(picture)
    pixels = size * DPI / 72                                   # the font's em in pixels
    pad = max(1, round(pixels / 6))
    tag_width, tag_height = math.ceil(text_width(label, size)) + 2 * pad, math.ceil(1.2 * pixels) + 2 * pad
    tag_left = max(0, min(left, width - tag_width))
    tag_top = top - tag_height if top - tag_height >= 0 else min(top + line, max(0, height - tag_height))
    draw.rectangle([tag_left, tag_top, tag_left + tag_width - 1, tag_top + tag_height - 1], fill=WHITE, outline=BLACK)
    baseline = tag_top + pad + 0.95 * pixels
    return letter(np.asarray(picture), [(tag_left + pad, baseline, label, size, False, "left")])
