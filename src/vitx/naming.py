"""File names of what vitx writes: one overlay and map per image and method, and the pages of a run's grid."""
from __future__ import annotations

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


def numbered(stem: str, suffix: str, pages: int) -> list[str]:
    """One file name per page: ``<stem><suffix>`` alone, else ``<stem>_001<suffix>``, ``<stem>_002<suffix>``, ..."""
    if pages == 1:
        return [stem + suffix]
    width = max(3, len(str(pages)))
    return [f"{stem}_{page:0{width}d}{suffix}" for page in range(1, pages + 1)]
