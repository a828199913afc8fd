"""Training data drawn by seed, in this process or ahead of the training loop in worker processes: the same batches
in the same order either way."""
from __future__ import annotations

from torch.utils.data import DataLoader, Dataset


def step_batches(draw, seeds: list[int], batch_size: int, workers: int):
    """``draw(n=batch_size, seed=s)`` for each seed in order: in this process, or ``workers`` processes ahead."""
    if not workers:
        return (draw(n=batch_size, seed=s) for s in seeds)
    return DataLoader(_Draws(draw, seeds, batch_size), batch_size=None, num_workers=workers, collate_fn=_as_drawn)


class _Draws(Dataset):
    def __init__(self, draw, seeds: list[int], batch_size: int):
        self.draw, self.seeds, self.batch_size = draw, seeds, batch_size

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, k: int):
        return self.draw(n=self.batch_size, seed=self.seeds[k])


def _as_drawn(data):
    return data
