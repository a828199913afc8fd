"""Explanations that NesT's tree gives (Zhang et al., AAAI 2022, Sec. 4.3): GradCAT's traversal from the root
to a leaf block, and exact class activation maps on the top level.

The tap's blocks on a NesT are its transformer layers, level by level (``config.levels`` of them per level);
the last layer of level l outputs the level's map in blocks, (B, T_l, N, C) with T_l = 4^(L−1−l) blocks of
N = b² positions. Block (r, c) of level l covers the four blocks (2r + i, 2c + j), i, j ∈ {0, 1}, of level
l − 1: the 2×2 partition of its own b×b map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch import Batch
from ..models.nest import deblockify
from ..registry import register

ZHANG_2022 = ("Zhang et al., AAAI 2022, Nested Hierarchical Transformer: Towards Accurate, Data-Efficient and "
              "Interpretable Visual Understanding")


def level_ends(levels: tuple[int, ...]) -> list[int]:
    """Index among the tap's blocks of the last transformer layer of each level."""
    ends, total = [], 0
    for depth in levels:
        total += depth
        ends.append(total - 1)
    return ends


def to_patch_grid(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) values on a coarser square map -> (B, gh, gw), each value repeated over the patches it covers."""
    return values.repeat_interleave(grid[0] // values.shape[1], 1).repeat_interleave(grid[1] // values.shape[2], 2)


@register("nest-cam", family="nest", paper=ZHANG_2022, cost="1F", kinds=("nest",))
def nest_cam(batch: Batch) -> torch.Tensor:
    """Class activation map on the top level (Zhou et al., CVPR 2016, as NesT's paper uses it):
    M(i, j) = w_tᵀ LN(F_ij) + b_t, F the top-level map, so that mean_ij M = y_t exactly (the head is a mean over
    positions followed by a linear layer). Each top-level position's value covers its share of the patch grid."""
    with torch.no_grad():
        _, tr = batch.run(attentions=False, original=True)
        per_position = batch.model.adapter.position_logits(tr.tokens[-1])          # (B, N, classes)
    cam = per_position[torch.arange(len(per_position)), :, batch.targets]
    side = round(cam.shape[1] ** 0.5)
    return to_patch_grid(cam.view(-1, side, side), batch.layout.grid)


def traverse(heat: list[torch.Tensor], block: int) -> tuple[torch.Tensor, list[list[dict]]]:
    """GradCAT's descent through the tree on the score maps ``heat`` (level 0 first, each (B, H_l, W_l), blocks of
    ``block``×``block`` positions): from the root, average the current node's map over its 2×2 partitions and go
    to the child with the largest average, down to a level-0 block. Returns the number of path nodes over each
    level-0 position (B, H_0, W_0) and, per image, the path from the root: ``{"level", "block": (row, col),
    "children": 2×2 averages}`` (the leaf has no children)."""
    B, side = heat[0].shape[0], heat[0].shape[1]
    device = heat[0].device
    rows = torch.zeros(B, dtype=torch.long, device=device)
    cols = torch.zeros_like(rows)
    index = torch.arange(B, device=device)[:, None, None]
    span, position = torch.arange(block, device=device), torch.arange(side, device=device)
    count = torch.zeros(B, side, side, device=device)
    paths: list[list[dict]] = [[] for _ in range(B)]
    for level in range(len(heat) - 1, -1, -1):
        extent = block * 2 ** level                                            # the node's side at level 0
        inside = [(position >= (k * extent)[:, None]) & (position < ((k + 1) * extent)[:, None]) for k in (rows, cols)]
        count += inside[0][:, :, None] & inside[1][:, None, :]
        nodes = [{"level": level, "block": (r, c)} for r, c in zip(rows.tolist(), cols.tolist())]
        for path, node in zip(paths, nodes):
            path.append(node)
        if level == 0:
            break
        r, c = (rows * block)[:, None] + span, (cols * block)[:, None] + span
        own = heat[level][index, r[:, :, None], c[:, None, :]]                # (B, b, b): the node's map
        children = F.avg_pool2d(own[:, None], block // 2)[:, 0]                # (B, 2, 2)
        for node, scores in zip(nodes, children.tolist()):
            node["children"] = scores
        best = children.flatten(1).argmax(1)
        rows, cols = 2 * rows + best // 2, 2 * cols + best % 2
    return count, paths


def level_scores(batch: Batch) -> tuple[list[torch.Tensor], int]:
    """GradCAT's score maps h_l = Σ_c A_l ⊙ (−∂y_t/∂A_l), level 0 first, each (B, H_l, W_l) on the level's
    whole map, and the positions along a block's side."""
    logits, tr = batch.run(attentions=False, original=True)
    features = [tr.tokens[i] for i in level_ends(batch.model.config.levels)]  # (B, T_l, N, C) per level
    grads = torch.autograd.grad(batch.score(logits), features)
    block = round(features[0].shape[2] ** 0.5)
    return [deblockify(-(f * g).sum(-1, keepdim=True), block)[..., 0].detach() for f, g in zip(features, grads)], block


@register("gradcat", family="nest", paper=ZHANG_2022, needs={"gradients"}, cost="1F+1B", kinds=("nest",))
def gradcat(batch: Batch) -> torch.Tensor:
    """GradCAT (Zhang et al. 2022, Alg. 1): h_l = Σ_c A_l ⊙ (−∂y_t/∂A_l) on each level's map A_l, then
    :func:`traverse` from the root to a leaf block, moving at each level to the child whose 2×2 partition of
    the current node has the largest mean h_l. ``exp.details["path"]``: each image's path (level, block, the
    children's scores). The map counts the path's nodes over each patch: L on the leaf, 1 outside the root's
    chosen child."""
    heat, block = level_scores(batch)
    count, paths = traverse(heat, block)
    batch.details.setdefault("path", []).extend(paths)
    return to_patch_grid(count, batch.layout.grid)
