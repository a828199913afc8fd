"""Shifted-window geometry (Swin, Liu et al., ICCV 2021) and the products of token vectors with windowed attention.

A Swin block attends within windows: the stage's (H, W) token map is rolled by −shift, cut into windows of
wh×ww tokens (windows row-major, tokens row-major within a window), and each window attends to itself. The tap
records the attention windowed, (B, heads, nW, w², w²), w² = wh·ww. :meth:`WindowGeometry.token_index` maps a
window position back to its token in the stage's row-major order; with it, :func:`dense` places each window's
attention into the full token-by-token matrix (block-diagonal once the tokens are taken in the rolled frame),
and :func:`times_windows` multiplies a row vector by that dense matrix without forming it. Between stages a
patch merging halves the grid: :func:`spread` hands each merged token's value to its 2×2 children.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .errors import VitxError


@dataclass(frozen=True)
class WindowGeometry:
    grid: tuple[int, int]      # the stage's token map (H, W)
    window: tuple[int, int]    # (wh, ww) tokens per window
    shift: tuple[int, int]     # (sh, sw): the map is rolled by −shift before it is cut into windows

    def __post_init__(self):
        if any(g % w for g, w in zip(self.grid, self.window)):
            raise VitxError(f"a {self.grid[0]}x{self.grid[1]} token map is not a whole number of "
                            f"{self.window[0]}x{self.window[1]} windows: the model pads it, and the tap records "
                            "unpadded windows only; use an image size whose token maps the windows divide")

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_windows(self) -> int:
        return (self.grid[0] // self.window[0]) * (self.grid[1] // self.window[1])

    def token_index(self, device=None) -> torch.Tensor:
        """(nW, w²) long: the row-major index in the stage's map of each window's tokens. Window (a, b), position
        (p, q) holds token ((a·wh + p + sh) mod H, (b·ww + q + sw) mod W). Made once per geometry and device (the
        walk asks for it per block and batch): read it, never write to it."""
        return _token_index(self, torch.device(device) if device is not None else torch.device("cpu"))


@lru_cache(maxsize=None)
def _token_index(geometry: WindowGeometry, device: torch.device) -> torch.Tensor:
    (H, W), (wh, ww), (sh, sw) = geometry.grid, geometry.window, geometry.shift
    with torch.inference_mode(False):       # a cached index may later be saved for a backward pass
        rows = (torch.arange(H, device=device) + sh) % H
        cols = (torch.arange(W, device=device) + sw) % W
        index = rows[:, None] * W + cols[None, :]                               # the rolled map
        return index.view(H // wh, wh, W // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def dense(attention: torch.Tensor, geometry: WindowGeometry) -> torch.Tensor:
    """Windowed attention (..., nW, w², w²) -> the token-by-token matrix (..., N, N) of the stage's map (N = H·W,
    row-major): entry (i, j) is the weight of token j in token i's window, 0 where they share no window."""
    index = geometry.token_index(attention.device)
    out = attention.new_zeros(*attention.shape[:-3], geometry.num_tokens, geometry.num_tokens)
    out[..., index[:, :, None], index[:, None, :]] = attention
    return out


def times_windows(row: torch.Tensor, matrix: torch.Tensor, geometry: WindowGeometry) -> torch.Tensor:
    """u ↦ u M for row vectors u (B, N) and the dense matrix M of windowed ``matrix`` (B, nW, w², w²)
    (:func:`dense`), computed window by window: (B, N)."""
    index = geometry.token_index(row.device).flatten()
    inside = row[:, index].view(*matrix.shape[:-1])                               # (B, nW, w²)
    product = torch.einsum("bwi,bwij->bwj", inside, matrix).flatten(1)
    return torch.zeros_like(row).index_copy(1, index, product)


def spread(row: torch.Tensor, parent: tuple[int, int], child: tuple[int, int]) -> torch.Tensor:
    """u ↦ u P across a patch merging: (B, h·w) values on the merged map ``parent`` -> (B, H·W) on the map before
    it, ``child``, each merged token's value split equally over its 2×2 children (a bottom or right edge the
    merging padded keeps the shares of the children that exist)."""
    (h, w), (H, W) = parent, child
    if (h, w) != ((H + 1) // 2, (W + 1) // 2):
        raise VitxError(f"a {H}x{W} token map does not merge into {h}x{w}")
    values = row.view(-1, h, w).repeat_interleave(2, 1).repeat_interleave(2, 2) / 4
    return values[:, :H, :W].reshape(row.shape[0], -1)


def walk(start: torch.Tensor, matrices: list[torch.Tensor], geometries: list[WindowGeometry],
         accumulate: bool) -> torch.Tensor:
    """The row vector u = ``start`` (B, N_L) on the last block's map, carried back through the blocks, last first:
    u ← u M_b (``accumulate=False``) or u ← u + u M_b (``accumulate=True``) for each block's windowed matrix M_b
    (B, nW, w², w²), and u ← u P at every patch merging between two blocks (:func:`spread`). ``matrices`` holds the
    last len(matrices) blocks of ``geometries``; before them u only spreads, down to the first block's map.
    Returns u on the first block's map, (B, H_0, W_0)."""
    row = start
    first = len(geometries) - len(matrices)
    for b in range(len(geometries) - 1, -1, -1):
        geometry = geometries[b]
        if b < len(geometries) - 1 and geometry.grid != geometries[b + 1].grid:
            row = spread(row, geometries[b + 1].grid, geometry.grid)
        if b >= first:
            product = times_windows(row, matrices[b - first], geometry)
            row = row + product if accumulate else product
    return row.view(-1, *geometries[0].grid)


def mean_row(tokens: int, like: torch.Tensor) -> torch.Tensor:
    """(B, N) rows of 1/N: the mean over query tokens that a mean-pooling head reads."""
    return like.new_full((like.shape[0], tokens), 1.0 / tokens)


__all__ = ["WindowGeometry", "dense", "times_windows", "spread", "walk", "mean_row"]
