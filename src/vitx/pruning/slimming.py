"""Patch Slimming (Tang, Han, Wang, Xu, Guo, Xu & Tao, CVPR 2022, Patch Slimming for Efficient Vision Transformers):
a static keep mask per block, searched top-down from the last block to the first, so that each block computes the
outputs of the patch tokens the blocks above it need, and nothing else.

**Masks.** m_l ∈ {0, 1}^N marks the tokens block l outputs (l = 0..L−1; the class token always). The last block's
output is read only through the class token, so m_{L−1} = e_cls; and a token a block needs must have been computed
by the block below it, m_{l+1} ⊆ m_l (the paper's top-down rule). The masks hold for every image (dataset-level).

**Pruned block** (the paper's B_l(Z_{l−1}, m_l) = diag(m_l) Σ_h P_l^h Z_{l−1} W_l, then the MLP on the kept rows):
every token of the block's input is a key and a value, only the kept ones are queries, so attention is
(n_out x n_in), and the residual and MLP run on the n_out kept tokens (:func:`vitx.pruning.blocks.run_block` with
``queries``). The sequence really shortens, so :func:`vitx.flops.count_flops` sees the saving.

**Impact score** (the paper's Theorem 1): patch i at block t weighs on the error of the last kept output by

    s_{t,i} = Σ_{h ∈ [H]^{L−t}} ‖A_t^h[:, i] U_t^h[i, :]‖²_F,  A_t^h = Π_{l=t+1}^{L−1} diag(m_l) P_l^{h_l},
    U_t^h = P_t^{h_t} |Z_{t−1}|,

P_l^h block l's attention probabilities, Z_{t−1} block t's input tokens. The outer product's norm factorises,
‖a uᵀ‖² = ‖a‖²‖u‖², and the sum over the H^{L−t} head paths with it:

    s_{t,i} = G_t[i, i] · Σ_h ‖U_t^h[i, :]‖²,  G_{L−1} = I,  G_{l−1} = Σ_h (diag(m_l) P_l^h)ᵀ G_l (diag(m_l) P_l^h),

one (n x n) matrix per block instead of H^{L−t} products (:func:`impact`; tested against the explicit path sum).
Both sums are taken as means over heads: a constant factor per block, which changes no ranking and no share.

**Choices the paper leaves open, and ours.**
- No gradient. Theorem 1 bounds the error of the last block's kept output (the class token) with attention maps and
  token magnitudes only; neither reproduction we read (CENG502-Projects/CENG502-Spring2023 ``Keles/``,
  junsu0306/Server_Compression ``patch_slimming/``) uses a gradient either. The score has no target class.
- Blocks below t run unpruned while block t is scored (their masks are not decided yet), blocks above t with
  theirs; the score of a patch is its mean over a calibration set of training images (the paper samples a subset).
- How many patches a block keeps. The paper adds patches r' = 10 at a time (of 196), fine-tuning block t after each
  step, until the reconstruction error at block t + 1 falls under a tolerance ε. We skip the per-block fine-tuning
  (one fine-tuning of the whole twin follows the search instead) and read ε through Theorem 1 itself: the error
  bound is the score of the patches dropped, so block t keeps m_{t+1} and then the best-scored patches, one at a
  time, until the patches it drops carry at most ε of its total score. ε is found by bisection so that the twin
  meets a target: ``flops`` (the twin's FLOPs over the model's, :func:`vitx.flops.count_flops` at batch 1) or
  ``keep`` (the mean share of patch tokens the blocks compute), each in (0, 1].
- The pruned attention computes keys, values and (in one ``qkv`` product) queries for every input token, then
  attends from the kept queries only; the paper's split query projection would save a few percent more FLOPs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import VitxError
from ..flops import count_flops
from .blocks import check_share, run_block

BISECTIONS = 12     # steps of the bisection over the tolerance ε


def _positions(kept: list[int] | None, prefix: int, patches: int) -> list[int]:
    """Token positions (prefix tokens first) of the patches ``kept`` (None: all of them)."""
    return list(range(prefix)) + [prefix + p for p in (range(patches) if kept is None else kept)]


def queries(kept_in: list[int] | None, kept_out: list[int], prefix: int, patches: int, device) -> torch.Tensor:
    """The slots, in a sequence holding the patches ``kept_in`` (None: all), of the tokens ``kept_out`` keeps."""
    slot = {token: i for i, token in enumerate(_positions(kept_in, prefix, patches))}
    return torch.tensor([slot[t] for t in _positions(kept_out, prefix, patches)], dtype=torch.long, device=device)


class Slimmed(nn.Module):
    """A vitx ``VisionTransformer`` (``vit``, with a class token read by its head) whose block l computes only the
    patches of ``masks[l]`` (their indices, row-major; nested: masks[l + 1] ⊆ masks[l]) and the prefix tokens.
    ``target`` records what the masks were searched for (metadata only). ``forward`` returns the logits."""

    def __init__(self, vit: nn.Module, masks, target: dict | None = None):
        super().__init__()
        if vit.cls_token is None or vit.cfg.global_pool != "token":
            raise VitxError("Patch Slimming needs a ViT with a class token that its head reads")
        depth, patches = len(vit.blocks), vit.grid_size[0] * vit.grid_size[1]
        masks = [sorted(int(p) for p in kept) for kept in masks]
        if len(masks) != depth or any(p < 0 or p >= patches for kept in masks for p in kept):
            raise VitxError(f"Patch Slimming needs one mask per block ({depth}) of patch indices in 0..{patches - 1}")
        if any(not set(masks[l + 1]) <= set(masks[l]) for l in range(depth - 1)):
            raise VitxError("Patch Slimming's masks must nest: a patch kept by a block is kept by every block below")
        self.vit, self.masks, self.target, self.patches = vit, masks, target, patches
        for l, kept in enumerate(masks):
            before = masks[l - 1] if l else None
            self.register_buffer(f"rows{l}", queries(before, kept, vit.num_prefix_tokens, patches, "cpu"),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.embed(x)
        for l, block in enumerate(self.vit.blocks):
            tokens, _ = run_block(block, tokens, queries=getattr(self, f"rows{l}"))
        return self.vit.forward_head(self.vit.norm(tokens))


def path_energy(downstream: list[torch.Tensor], tokens: int) -> torch.Tensor:
    """diag(G_t) (B, tokens): the head-path mean of ‖A_t[:, i]‖² from the attention probabilities of the blocks above
    t (each (B, H, n_out, n_in), the kept rows only; the first's n_in = ``tokens``), by G ← mean_h Pᵀ G P."""
    if not downstream:
        return torch.ones(1, tokens)
    last = downstream[-1]
    G = torch.eye(last.shape[2], dtype=last.dtype, device=last.device).expand(last.shape[0], -1, -1)
    for P in reversed(downstream):
        G = torch.einsum("bhji,bjk,bhkl->bil", P, G, P) / P.shape[1]
    return G.diagonal(dim1=-2, dim2=-1)


def impact(vit: nn.Module, x: torch.Tensor, masks: list, layer: int) -> torch.Tensor:
    """s_{t,i} (B, N) of every token (prefix first) at the output of block t = ``layer`` (module docstring): blocks
    below t unpruned, blocks above with ``masks[l]`` (only masks[t + 1:] are read)."""
    prefix, patches = vit.num_prefix_tokens, vit.grid_size[0] * vit.grid_size[1]
    tokens = vit.embed(x)
    for block in vit.blocks[:layer]:
        tokens = block(tokens)
    out, probs = run_block(vit.blocks[layer], tokens)
    energy = torch.matmul(probs, tokens.abs()[:, None]).square().sum(-1).mean(1)       # Σ_h ‖U_t^h[i, :]‖² / H
    downstream, before = [], None
    for l in range(layer + 1, len(vit.blocks)):
        rows = queries(before, masks[l], prefix, patches, x.device)
        out, p = run_block(vit.blocks[l], out, queries=rows)
        downstream.append(p)
        before = masks[l]
    return path_energy(downstream, tokens.shape[1]).to(energy) * energy


@torch.no_grad()
def mean_impact(vit: nn.Module, images: torch.Tensor, masks: list, layer: int, batch_size: int = 64) -> torch.Tensor:
    """(P,): each patch's impact at block ``layer``, averaged over ``images`` (the prefix tokens left out)."""
    prefix = vit.num_prefix_tokens
    total = sum(impact(vit, images[i:i + batch_size], masks, layer)[:, prefix:].double().sum(0)
                for i in range(0, len(images), batch_size))
    return total / len(images)


def masks_at(vit: nn.Module, images: torch.Tensor, tolerance: float) -> list[list[int]]:
    """The top-down search at tolerance ε: the last block keeps the class token alone; block t keeps block t + 1's
    patches, then the best-scored others until those it drops carry at most ε of its total score."""
    depth = len(vit.blocks)
    masks: list = [None] * depth
    masks[-1] = []
    for t in range(depth - 2, -1, -1):
        score = mean_impact(vit, images, masks, t)
        kept = set(masks[t + 1])
        candidates = [p for p in score.argsort(descending=True).tolist() if p not in kept]
        left = score[candidates].flip(0).cumsum(0).flip(0).tolist() + [0.0]   # left[r]: score of candidates[r:]
        budget = tolerance * score.sum().item()
        r = next(r for r, rest in enumerate(left) if rest <= budget)
        masks[t] = sorted(kept | set(candidates[:r]))
    return masks


def search(vit: nn.Module, images: torch.Tensor, flops: float | None = None, keep: float | None = None
           ) -> tuple[list[list[int]], float, float]:
    """Masks meeting one target, ``flops`` (FLOPs of the slimmed model over the model's) or ``keep`` (mean share of
    patch tokens the blocks compute), from the calibration ``images`` (normalised): the smallest tolerance ε found by
    bisection whose masks meet it. Returns the masks, ε and the measured value."""
    if (flops is None) == (keep is None):
        raise VitxError("Patch Slimming searches for one target: flops or keep")
    target = check_share(flops if keep is None else keep, "FLOPs" if keep is None else "keep")
    patches = vit.grid_size[0] * vit.grid_size[1]
    full = count_flops(vit, images[:1]) if keep is None else None

    def measure(masks):
        if full is None:
            return sum(len(m) for m in masks) / (len(masks) * patches)
        return count_flops(Slimmed(vit, masks), images[:1]) / full

    found = masks_at(vit, images, 1.0)
    value = measure(found)
    if value > target:
        raise VitxError(f"Patch Slimming cannot reach the target {target:g}: with every patch dropped that can be, "
                        f"the model still computes {value:.3f} of it")
    low, high = 0.0, 1.0
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        masks = masks_at(vit, images, middle)
        measured = measure(masks)
        if measured <= target:
            high, found, value = middle, masks, measured
        else:
            low = middle
    return found, high, value
