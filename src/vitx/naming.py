"""File names of what vitx writes: one overlay and map per image (a detector's: per object) and method, the index of
a detector's objects, and the pages of a run's grid."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import VitxError


def image_stems(paths) -> list[str]:
    """File stems of ``paths``, which name the outputs; two images with the same stem are refused (their
    outputs would overwrite each other)."""
    stems = [Path(path).stem for path in paths]
    seen = set()
    for stem in stems:
        if stem in seen:
            raise VitxError(f"two images are named {stem!r}: outputs are named after the file, rename one")
        seen.add(stem)
    return stems


def explanation_file(stem: str, method: str, suffix: str = ".png") -> str:
    """``<image>_<method><suffix>``: the overlay (.png) or map (.npy) of one image (named by ``stem``: its file's
    stem, or its index as ``f"{i:03d}"``) explained by ``method``."""
    return f"{stem}_{method}{suffix}"


OBJECTS_FILE = "objects.json"   # beside a detector's overlays: which file shows which object


def object_stem(image: str, query: int, class_name: str) -> str:
    """``<image>_q<query>_<class>``: a detector's object, e.g. ``scene_q3_circle``; characters of the class name
    that are not letters, digits, ``.`` or ``-`` become ``-`` (``traffic light`` -> ``traffic-light``)."""
    plain = re.sub(r"[^\w.-]+", "-", class_name).strip("-") or "object"
    return f"{image}_q{query}_{plain}"


def update_object_index(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (one per object, each with its file ``name`` stem and ``files``) to the JSON list at ``path``,
    one row a line, merged with the rows already there: a row of the same ``name`` takes the new facts and the files
    of both (another method's overlays of the same object); the others are kept, first. A file that is not such a
    list is replaced."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        kept = {row["name"]: row for row in kept if isinstance(row.get("files"), list)}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        kept = {}
    for row in rows:
        files = kept.get(row["name"], {}).get("files", [])
        kept[row["name"]] = {**row, "files": files + [file for file in row["files"] if file not in files]}
    path.write_text("[\n" + ",\n".join(json.dumps(row) for row in kept.values()) + "\n]\n", encoding="utf-8")
    return path


def numbered(stem: str, suffix: str, pages: int) -> list[str]:
    """One file name per page: ``<stem><suffix>`` alone, else ``<stem>_001<suffix>``, ``<stem>_002<suffix>``, ..."""
    if pages == 1:
        return [stem + suffix]
    width = max(3, len(str(pages)))
    return [f"{stem}_{page:0{width}d}{suffix}" for page in range(1, pages + 1)]
