"""``vitx explain`` on a detector (DETR-like): ``--target`` read as query indices or class names, and how the objects
are labelled in the grid and listed in the summary."""
from __future__ import annotations

import re

from ..viz import probability
from .options import comma_list


def detector_target(text: str | None) -> list | None:
    """``--target`` for a detector: comma-separated query indices (``3,5``) or class names (``circle,star``); None
    explains every detection over the threshold. A mix of both is refused by :func:`vitx.objects.find_objects`."""
    if text is None:
        return None
    return [int(item) if re.fullmatch(r"[-+]?\d+", item) else item for item in comma_list(text)]


def box_text(box) -> str:
    x0, y0, x1, y1 = box
    return f"({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f})"


def object_label(name: str, row: dict) -> str:
    """A grid row's label for one object: its file stem, class with score, and box."""
    return f"{name}\ndetected: {row['class']} ({probability(row['score'])})\nbox: {box_text(row['box'])}"


def object_table(images: list[str], rows: list[dict]) -> str:
    """The objects explained, one line each: image (its file stem), query, class, score, box (x0, y0, x1, y1) in
    pixels of the model input."""
    header = ("image", "query", "class", "score", "box (x0, y0, x1, y1)")
    lines = [header] + [(images[row["image"]], str(row["query"]), row["class"], probability(row["score"]),
                         box_text(row["box"])) for row in rows]
    widths = [max(len(line[k]) for line in lines) for k in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(line, widths)), line[-1]])
                     for line in lines)
