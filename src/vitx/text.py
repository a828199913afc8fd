"""The text beside the images of a bi-modal model: questions encoded once, sliced with the images' chunks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import VitxError


@dataclass(frozen=True)
class Text:
    """Questions encoded for a model: ids (B, L) int64, mask (B, L) bool (True: a token, False: padding), and per
    question its tokens as strings, special tokens included ([CLS] first), padding left out. Token j of
    ``tokens[i]`` is column j."""
    ids: torch.Tensor
    mask: torch.Tensor
    tokens: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, rows: slice) -> "Text":
        return Text(self.ids[rows], self.mask[rows], self.tokens[rows])

    def select(self, rows: torch.Tensor) -> "Text":
        """The texts at ``rows`` (k,) int64, in that order (repeats allowed)."""
        rows = rows.cpu()
        return Text(self.ids[rows.to(self.ids.device)], self.mask[rows.to(self.mask.device)],
                    tuple(self.tokens[i] for i in rows.tolist()))

    def to(self, device) -> "Text":
        return Text(self.ids.to(device), self.mask.to(device), self.tokens)

    def repeat(self, copies: int) -> "Text":
        """The questions ``copies`` times over, as a batch stacked ``copies`` times along dim 0."""
        return Text(self.ids.repeat(copies, 1), self.mask.repeat(copies, 1), self.tokens * copies)

    def keep(self, kept: torch.Tensor) -> "Text":
        """Only the tokens ``kept`` (B, L) bool of each question, in their order, packed to the left and padded:
        tokens deleted, not masked (Chefer et al. 2021's text perturbation)."""
        kept = kept.to(self.mask.device) & self.mask
        order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices   # kept columns first, in order
        mask = kept.gather(1, order)
        ids = self.ids.gather(1, order).masked_fill(~mask, 0)
        tokens = tuple(tuple(t for t, k in zip(row, flags) if k) for row, flags in zip(self.tokens, kept.tolist()))
        return Text(ids, mask, tokens)


def check_count(text: Text, count: int) -> None:
    if len(text) != count:
        raise VitxError(f"got {len(text)} questions for {count} images: give one question per image")
