"""Side-by-side grids: one row per image (its label, the image, then one heatmap overlay per column) under the
column titles, with a colour bar at the foot; long runs are split into pages of :data:`ROWS_PER_PAGE` rows. For a
bi-modal model each overlay has the question's words under it, coloured by that column's text map (:mod:`.words`).

Drawing is linear in the rows: the cells are pasted into one pixel array row by row and the text is placed
at fixed pixel positions on a single figure (no layout solver: matplotlib's constrained layout over one axes per
cell was what made 320 rows take minutes)."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from .boxes import boxed
from .overlay import overlay
from .text import letter, text_width, wrap
from .words import paint, place_words, word_colours

ROWS_PER_PAGE = 32
GAP = 4            # white pixels between cells
FOOTER = 46        # pixels below the last row, for the colour bar
LABEL_SIZE, TITLE_SIZE = 8, 9   # points
LINE = 13          # pixels per line of a label


def grid_pages(images: torch.Tensor, columns: dict[str, torch.Tensor], row_labels=(), *,
               rows_per_page: int = ROWS_PER_PAGE, text_tokens=None, text_maps: dict[str, torch.Tensor] | None = None,
               boxes=None, **style) -> list[Image.Image]:
    """:func:`grid` of ``rows_per_page`` images at a time: one PIL image per page."""
    if rows_per_page < 1:
        raise ValueError(f"rows_per_page must be at least 1, got {rows_per_page}")
    labels = list(row_labels)
    pages = [slice(start, start + rows_per_page) for start in range(0, images.shape[0], rows_per_page)]
    return [grid(images[rows], {k: v[rows] for k, v in columns.items()}, labels[rows],
                 text_tokens=None if text_tokens is None else text_tokens[rows],
                 text_maps=None if text_maps is None else {k: v[rows] for k, v in text_maps.items()},
                 boxes=None if boxes is None else boxes[rows], **style)
            for rows in pages]


def grid(images: torch.Tensor, columns: dict[str, torch.Tensor], row_labels=(), *, text_tokens=None,
         text_maps: dict[str, torch.Tensor] | None = None, boxes=None, first_title: str = "image", cell: int = 180,
         alpha: float = 0.5, cmap: str = "jet", colorbar: bool = True) -> Image.Image:
    """A PIL image of ``images`` (B, 3, H, W) in [0, 1], each followed by its maps (B, H, W) from every entry of
    ``columns`` (column title -> maps), drawn as overlays in cells ``cell`` pixels wide. ``row_labels`` (one per
    image, lines split by newlines) are wrapped into a panel left of the image; a row grows to hold its label.
    Bi-modal: ``text_tokens`` (per image, its question's tokens) and ``text_maps`` (column title -> (B, L) relevance
    per token) put the words, coloured by :func:`~vitx.viz.words.word_colours`, under each overlay (in grey under a
    column without a text map). Detector:
    ``boxes`` (one (x0, y0, x1, y1) per image, in its pixels) framed in the image and every overlay
    (:func:`~vitx.viz.boxes.boxed`, without a tag: the label panel names the object)."""
    labels = [str(label) for label in row_labels]
    rows = images.shape[0]
    words = [[word_colours(text_tokens[r], text_maps[title][r], cmap, alpha) if title in text_maps
              else [None] * len(text_tokens[r]) for title in columns]
             if text_maps is not None else [] for r in range(rows)]
    below = [max((place_words(text_tokens[r], colours, cell)[0] + GAP for colours in words[r]), default=0)
             for r in range(rows)]
    label_width = cell if labels else 0
    wrapped = [wrap(label, label_width - 2 * GAP, LABEL_SIZE) for label in labels]
    titles = [wrap(title, cell, TITLE_SIZE, bold=True) for title in [first_title, *columns]]
    header = GAP + LINE * max(map(len, titles)) + GAP
    heights = [max(cell + below[r], LINE * len(wrapped[r]) + 2 * GAP if r < len(wrapped) else 0) for r in range(rows)]
    left = label_width + GAP
    width = left + (1 + len(columns)) * (cell + GAP)
    height = header + sum(heights) + GAP * rows + (FOOTER if colorbar else 0)
    sheet = np.full((height, width, 3), 255, np.uint8)
    texts = []  # text.letter's (x, y, text, size, bold, align)
    for c, lines in enumerate(titles):
        for k, line in enumerate(lines):
            texts.append((left + c * (cell + GAP) + cell / 2, GAP + LINE * (k + 1) - 3, line, TITLE_SIZE, True,
                          "center"))
    top = header
    for r in range(rows):
        for c, picture in enumerate(_row(images[r], [maps[r] for maps in columns.values()], alpha, cmap)):
            fitted = _fit(picture, cell)
            if boxes is not None:
                fitted = np.asarray(boxed(Image.fromarray(fitted), boxes[r], None, images.shape[-2:]))
            _paste(sheet, fitted, left + c * (cell + GAP), top)
        for c, colours in enumerate(words[r], 1):
            _, patches, lettering = place_words(text_tokens[r], colours, cell, left + c * (cell + GAP),
                                                top + cell + GAP)
            paint(sheet, patches)
            texts += lettering
        for k, line in enumerate(wrapped[r] if r < len(wrapped) else []):
            texts.append((GAP, top + GAP + LINE * (k + 1) - 3, line, LABEL_SIZE, False, "left"))
        top += heights[r] + GAP
    if colorbar:
        texts += _colorbar(sheet, cmap, left, top + 6, min(width - left - GAP, 3 * cell))
    return letter(sheet, texts)


def _row(image: torch.Tensor, maps: list[torch.Tensor], alpha: float, cmap: str) -> list[Image.Image]:
    """One row's cells: the image, then its overlay with each map."""
    picture = Image.fromarray((image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return [picture] + [overlay(image, relevance, alpha=alpha, cmap=cmap) for relevance in maps]


def _fit(picture: Image.Image, cell: int) -> np.ndarray:
    """``picture`` scaled to fit a ``cell``-pixel square, its aspect kept: crisp when enlarged, smooth when shrunk."""
    scale = cell / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return np.asarray(picture.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR))


def _paste(sheet: np.ndarray, cell: np.ndarray, x: int, y: int) -> None:
    sheet[y:y + cell.shape[0], x:x + cell.shape[1]] = cell


def _colorbar(sheet: np.ndarray, cmap: str, x: int, y: int, width: int) -> list[tuple]:
    """Draw the colour scale of the overlays into ``sheet`` at (x, y); return its captions."""
    bar = (colormaps[cmap](np.linspace(0, 1, width))[None, :, :3] * 255).round().astype(np.uint8)
    _paste(sheet, np.repeat(bar, 12, 0), x, y)
    caption = y + 12 + LINE + 1
    texts = [(x, caption, "0: least relevant", LABEL_SIZE, False, "left"),
             (x + width, caption, "1: most relevant", LABEL_SIZE, False, "right")]
    middle = "relevance to the target class, each map min-max scaled"
    if text_width(middle, LABEL_SIZE) + 2 * text_width("1: most relevant", LABEL_SIZE) + 40 < width:
        texts.append((x + width / 2, caption, middle, LABEL_SIZE, False, "center"))
    return texts


def tile(images: torch.Tensor, columns: int = 8, gap: int = 2) -> Image.Image:
    """Images (B, 3, H, W) in [0, 1] side by side, ``columns`` to a row, ``gap`` white pixels between them."""
    B, _, H, W = images.shape
    rows = -(-B // columns)
    sheet = np.ones((rows * (H + gap) - gap, min(B, columns) * (W + gap) - gap, 3))
    for i, image in enumerate(images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, columns)
        sheet[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = image
    return Image.fromarray((sheet * 255).round().astype(np.uint8))
