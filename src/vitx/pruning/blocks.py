"""A vitx ViT's blocks, run step by step so that a pruning method can act between them or inside them.

``attend`` computes the attention product explicitly, ``softmax(q kᵀ/√d)`` (B, heads, N, N), and with a keep
``policy`` p (B, N) it is DynamicViT's softmax with a policy (Rao et al., NeurIPS 2021, Eq. 8): key j enters
query i's softmax with weight m_ij = p_j + (1 − p_j)·δ_ij, so a dropped token still attends to itself and no
kept token reads it, while the batch keeps one shape:
    A_ij = (exp(s_ij) m_ij + ε/N) / (Σ_k exp(s_ik) m_ik + ε),  ε = 1e-6.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import VitxError

POLICY_EPS = 1e-6


def attend(attn: nn.Module, x: torch.Tensor, policy: torch.Tensor | None = None, queries: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A vitx ``Attention`` module on tokens x (B, N, D): its output (B, N, D) and probabilities (B, heads, N, N).
    ``queries`` (n,): only those tokens ask (Patch Slimming's pruned attention): output (B, n, D), probabilities
    (B, heads, n, N), every token still a key and a value."""
    q, k, v = attn.split_heads(x)
    if queries is not None:
        q = q[:, :, queries]
    scores = torch.matmul(q, k.transpose(-2, -1)) * attn.scale
    probs = scores.softmax(-1) if policy is None else policy_softmax(scores, policy)
    return attn.merge_heads(torch.matmul(probs, v)), probs


def policy_softmax(scores: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Softmax over keys with key j weighted by m_ij = p_j + (1 − p_j)·δ_ij (see the module docstring)."""
    N = scores.shape[-1]
    eye = torch.eye(N, dtype=scores.dtype, device=scores.device)
    weights = policy[:, None, None, :].to(scores.dtype)
    weights = weights + (1 - weights) * eye
    exp = (scores - scores.amax(-1, keepdim=True)).exp() * weights
    return (exp + POLICY_EPS / N) / (exp.sum(-1, keepdim=True) + POLICY_EPS)


def attention_step(block: nn.Module, x: torch.Tensor, policy: torch.Tensor | None = None,
                   queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A vitx ``Block``'s attention half, x + ls1(MHSA(LN(x))), and the attention probabilities; with ``queries``
    (n,) only those tokens' rows (see :func:`attend`)."""
    out, probs = attend(block.attn, block.norm1(x), policy, queries)
    return (x if queries is None else x[:, queries]) + block.ls1(out), probs


def mlp_step(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A vitx ``Block``'s MLP half, x + ls2(MLP(LN(x)))."""
    return x + block.ls2(block.mlp(block.norm2(x)))


def run_block(block: nn.Module, x: torch.Tensor, policy: torch.Tensor | None = None,
              queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One vitx ``Block`` with explicit (optionally policy-masked) attention: its output tokens and probabilities;
    with ``queries`` (n,) the block computes those tokens' outputs only, every input token still read."""
    x, probs = attention_step(block, x, policy, queries)
    return mlp_step(block, x), probs


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per image, the rows of x (B, N, ...) at ``index`` (B, k): (B, k, ...)."""
    return x.gather(1, index.view(*index.shape, *(1,) * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))


def default_stages(depth: int) -> tuple[int, ...]:
    """Where DynamicViT and EViT prune a DeiT of 12 blocks (before blocks 3, 6 and 9), scaled to ``depth`` blocks:
    ⌊depth/4⌋, ⌊depth/2⌋, ⌊3·depth/4⌋ (1, 3, 4 for the 6 blocks of ``shapes-vit``)."""
    return tuple(sorted({depth // 4, depth // 2, 3 * depth // 4} - {0}))


def parse_stages(stages: str | None, depth: int) -> tuple[int, ...]:
    """Blocks named as "1,3,4" (None: :func:`default_stages`), each checked to exist and to leave a block before it."""
    if stages is None:
        return default_stages(depth)
    try:
        blocks = tuple(int(s) for s in str(stages).split(","))
    except ValueError:
        raise VitxError(f"stages must be block indices separated by commas, such as '1,3,4'; got {stages!r}") from None
    if list(blocks) != sorted(set(blocks)) or not all(1 <= b < depth for b in blocks):
        raise VitxError(f"stages {stages!r} do not exist: they must be increasing blocks in 1..{depth - 1} of this "
                        f"model's {depth} (block 0 sees every token)")
    return blocks


def check_share(value, what: str) -> float:
    """A target given as a share of the original model (its FLOPs, or the patch tokens it computes), in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise VitxError(f"the {what} target is a share of the original model's, in (0, 1]; got {value!r}")
    return float(value)
