"""A question's words coloured by their relevance to the answer, for the pictures of bi-modal explanations.

Each word sits on a box of the overlay's colour map blended with white, as the heatmap is blended with the image.
The colours are the text map min-max scaled over the question's words, so they order the words as the text map
does. The special tokens [CLS], [SEP] and [PAD] are written in grey without a box: they hold relevance (the saved
text map keeps it), but are not words of the question, and [CLS] would take the top of the scale from them.
[UNK] stands for a word outside the vocabulary and is coloured.
"""
from __future__ import annotations

from math import ceil

import numpy as np
import torch
from PIL import Image

from .overlay import heatmap
from .text import letter, text_width, wrap

SPECIAL = ("[CLS]", "[SEP]", "[PAD]")
GREY = "#8c8c8c"
SIZE = 8          # points, of the words and of the lines under them
WORD_LINE = 16    # pixels per line of words: boxes 14 high, 2 apart
TEXT_LINE = 13    # pixels per line of plain text
PAD, SPACE, MARGIN = 2, 3, 4   # pixels: inside a box either side of its word, between boxes, around a caption
CAPTION_WIDTH = 192            # the least width of a captioned overlay, so the words are not squeezed

Colour = tuple[float, float, float]


def word_colours(tokens, relevance, cmap: str = "jet", alpha: float = 0.5) -> list[Colour | None]:
    """Per token, the RGB colour in [0, 1] of its box: ``cmap`` at its ``relevance`` (one value per token; columns
    beyond the tokens, padding, are ignored) min-max scaled over the words, blended with white by ``alpha``;
    None for a special token. Words of equal relevance all get the colour of 0, as a constant image map does."""
    values = np.asarray(relevance.detach().cpu() if isinstance(relevance, torch.Tensor) else relevance,
                        np.float64)[:len(tokens)]
    words = [k for k, token in enumerate(tokens) if token not in SPECIAL]
    colours: list[Colour | None] = [None] * len(tokens)
    if words:
        for k, colour in zip(words, 1 - alpha + alpha * heatmap(values[words], cmap)):
            colours[k] = tuple(float(c) for c in colour)
    return colours


def place_words(tokens, colours: list[Colour | None], width: int, x: int = 0, y: int = 0):
    """``tokens`` laid out left to right in lines of at most ``width`` pixels from (x, y): (height in pixels, boxes
    as (left, top, right, bottom, colour), texts as :func:`~vitx.viz.text.letter` takes them)."""
    boxes, texts = [], []
    left = top = 0
    for token, colour in zip(tokens, colours):
        span = ceil(text_width(token, SIZE)) + 2 * PAD
        if left and left + span > width:
            left, top = 0, top + WORD_LINE
        if colour is not None:
            boxes.append((x + left, y + top, x + min(left + span, width), y + top + WORD_LINE - 2, colour))
        texts.append((x + left + PAD, y + top + WORD_LINE - 5, token, SIZE, False, "left",
                      "black" if colour is not None else GREY))
        left += span + SPACE
    return (top + WORD_LINE if tokens else 0), boxes, texts


def paint(sheet: np.ndarray, boxes: list[tuple]) -> None:
    """Fill ``boxes`` from :func:`place_words` into ``sheet`` (H, W, 3) uint8."""
    for left, top, right, bottom, colour in boxes:
        sheet[top:bottom, left:right] = np.round(np.asarray(colour) * 255).astype(np.uint8)


def captioned(picture: Image.Image, tokens, colours: list[Colour | None], lines=()) -> Image.Image:
    """``picture`` (centred, at least :data:`CAPTION_WIDTH` wide) above the coloured ``tokens`` and then the text
    ``lines`` (e.g. the answer, wrapped to the width), on white."""
    width = max(picture.width, CAPTION_WIDTH)
    inner = width - 2 * MARGIN
    words, boxes, texts = place_words(tokens, colours, inner, MARGIN, picture.height + MARGIN)
    wrapped = [part for line in lines for part in wrap(line, inner, SIZE)]
    top = picture.height + MARGIN + words
    texts += [(MARGIN, top + TEXT_LINE * (k + 1) - 3, line, SIZE, False, "left") for k, line in enumerate(wrapped)]
    sheet = np.full((top + TEXT_LINE * len(wrapped) + MARGIN, width, 3), 255, np.uint8)
    left = (width - picture.width) // 2
    sheet[:picture.height, left:left + picture.width] = np.asarray(picture.convert("RGB"))
    paint(sheet, boxes)
    return letter(sheet, texts)
