"""Per-stage keep decisions of a pruned ViT, and the token map they make.

At a stage, the patch tokens still present are scored (``scored``: their original patch indices (B, n), ``score``
in [0, 1]: a keep probability, or EViT's class attention) and some are kept (``kept``: original indices (B, k)).
A patch's survival value is the number of stages it survived plus the score it had at the last stage that scored
it, s_i + p_i with p_i ∈ [0, 1]: the order in which the papers' figures grey tokens out (dropped first = lowest),
with the last score breaking ties within a stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Stage:
    block: int              # the block before which (or, for EViT, inside which) the tokens were pruned
    scored: torch.Tensor    # (B, n) original patch indices of the tokens scored here (P: EViT's fused token)
    score: torch.Tensor     # (B, n) their scores in [0, 1]
    kept: torch.Tensor      # (B, k) original patch indices of the tokens kept


def survival_map(stages: list[Stage], patches: int) -> torch.Tensor:
    """(B, P): stages survived + the score at the last stage that scored each patch (module docstring). Indices
    equal to P (a fused token, which is no patch) are ignored."""
    first = stages[0].score
    survived = torch.zeros(first.shape[0], patches + 1, dtype=first.dtype, device=first.device)
    last = torch.zeros_like(survived)
    for stage in stages:
        last.scatter_(1, stage.scored, stage.score.to(first.dtype))
        survived.scatter_add_(1, stage.kept, torch.ones_like(stage.kept, dtype=first.dtype))
    return (survived + last)[:, :patches]


def kept_lists(stages: list[Stage], patches: int) -> list[list[list[int]]]:
    """Per image, per stage, the original indices of the patches kept, in increasing order (``exp.details["kept"]``)."""
    per_stage = [[sorted(i for i in row if i < patches) for row in stage.kept.tolist()] for stage in stages]
    return [list(image) for image in zip(*per_stage)]
