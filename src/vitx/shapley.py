"""Shapley values of P players from a value function v on coalitions: KernelSHAP's sampling and its
constrained regression, and the exact values over all 2^P coalitions (a test oracle for small P).

A coalition is a boolean row over the players, (…, P); ``values`` hold v of each coalition per image.
"""
from __future__ import annotations

import math

import torch

from .errors import VitxError

EXACT_LIMIT = 20   # players: the exact computation enumerates 2^P coalitions


def sample_coalitions(players: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """(2·⌈samples/2⌉, P) bool: coalitions drawn from the Shapley kernel, with paired sampling.

    A size s in 1..P−1 is drawn with probability ∝ (P−1)/(s(P−s)), then a subset of that size uniformly:
    each coalition S is drawn with probability ∝ π(S) = (P−1)/(C(P,|S|)|S|(P−|S|)) (Lundberg & Lee 2017,
    Theorem 2), so the regression weights them equally. Every drawn S comes with its complement
    (Covert & Lee, AISTATS 2021), which halves the variance for most games."""
    if players < 2:
        raise VitxError(f"KernelSHAP needs at least 2 players, got {players}")
    if samples < 2:
        raise VitxError(f"samples must be at least 2, got {samples}")
    sizes = torch.arange(1, players, dtype=torch.float64)
    draws = (samples + 1) // 2
    size = torch.multinomial(1 / (sizes * (players - sizes)), draws, replacement=True, generator=generator) + 1
    ranks = torch.rand(draws, players, generator=generator).argsort(1).argsort(1)
    chosen = ranks < size[:, None]
    return torch.cat([chosen, ~chosen])


def constrained_least_squares(coalitions: torch.Tensor, values: torch.Tensor, v_none: torch.Tensor,
                              v_all: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, P) Shapley estimates: argmin_φ Σ_k w_k (v(S_k) − v(∅) − z_kᵀφ)² s.t. Σ_i φ_i = v(N) − v(∅).

    coalitions (n, P) bool shared by the images, values (n, B), v_none and v_all (B,), weights (n,) (default
    equal: the coalitions were drawn from the kernel). As in Lundberg & Lee's supplement, the constraint
    eliminates the last player, φ_P = Δ − Σ_{i<P} φ_i with Δ = v(N) − v(∅), leaving the unconstrained problem
    v(S_k) − v(∅) − z_kP Δ = Σ_{i<P} (z_ki − z_kP) φ_i, solved by the pseudo-inverse (the minimum-norm
    solution where too few coalitions leave it underdetermined) in float64 for every image at once."""
    z = coalitions.to(torch.float64)
    delta = (v_all - v_none).to(torch.float64)
    target = values.to(torch.float64) - v_none.to(torch.float64) - z[:, -1:] * delta
    design = z[:, :-1] - z[:, -1:]
    if weights is not None:
        root = weights.to(torch.float64).sqrt()[:, None]
        design, target = design * root, target * root
    rest = torch.linalg.pinv(design) @ target                               # (P−1, B)
    phi = torch.cat([rest, (delta - rest.sum(0))[None]])
    return phi.T.to(values.dtype)


def all_coalitions(players: int, device=None) -> torch.Tensor:
    """(2^P, P) bool: row k is the coalition of the players whose bit is set in k (player i: bit i)."""
    if not 1 <= players <= EXACT_LIMIT:
        raise VitxError(f"exact Shapley values enumerate 2^P coalitions: P must be in 1..{EXACT_LIMIT}, got {players}")
    bits = 2 ** torch.arange(players, device=device)
    return torch.arange(2 ** players, device=device)[:, None] & bits > 0


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """(B, P) Shapley values from v on every coalition, ``values`` (2^P, B) in the order of :func:`all_coalitions`:
    φ_i = Σ_{S ∌ i} |S|!(P−|S|−1)!/P! · (v(S ∪ {i}) − v(S)), each coalition's value entering with weight
    w(|S|−1) for the players in it and −w(|S|) for those outside, w(s) = s!(P−1−s)!/P! = 1/(P·C(P−1, s))."""
    players = len(values).bit_length() - 1
    if len(values) != 2 ** players:
        raise VitxError(f"exact Shapley values need v on all 2^P coalitions, got {len(values)} values")
    z = all_coalitions(players, values.device)
    size = z.sum(1)
    w = torch.tensor([1 / (players * math.comb(players - 1, s)) for s in range(players)], dtype=torch.float64,
                     device=values.device)
    coefficients = torch.where(z, w[(size - 1).clamp(min=0)][:, None], -w[size.clamp(max=players - 1)][:, None])
    return (coefficients.T @ values.to(torch.float64)).T.to(values.dtype)


def efficient_normalization(phi: torch.Tensor, v_all: torch.Tensor, v_none: torch.Tensor) -> torch.Tensor:
    """The additive efficient normalisation of ViT Shapley (Covert, Kim & Lee, ICLR 2023, Eq. 5):
    φ_i + (v(N) − v(∅) − Σ_j φ_j) / P, so that the values sum to v(N) − v(∅) whatever φ was.
    ``phi`` (B, P, ...) with the players on dim 1; ``v_all``, ``v_none`` (B, ...)."""
    return phi + ((v_all - v_none) - phi.sum(1)).unsqueeze(1) / phi.shape[1]
