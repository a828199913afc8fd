"""Vision DiffMask (Nalmpantis et al., CVPR Workshops 2023), after DiffMask (De Cao et al., EMNLP 2020): which
input patches a frozen ViT needs to keep its prediction, learned by gates that read every layer.

Hidden states. For a ViT of L blocks, h_0 are the patch embeddings before the position embeddings are added
(the projection of each patch), h_1 the tokens entering block 1 (h_0 with the class token and positions),
h_{i+1} the tokens leaving block i, up to h_{L+1} (the last block's output, before the final norm): L + 2 states,
the patch tokens of each read (the class token's gate of the authors' code never acts on anything, and is left out).

Gates. Gate i (i = 0..L+1) is a small MLP on each patch j, reading the input and the state at its layer:
log α_ij = s·tanh(W₂ tanh(W₁ [h_0j; h_ij])) + b, with W₁: 2D → D/4, s = 15 fixed and b learned (starting at 8,
so every patch starts kept): the authors' ``MLPMaxGate`` with their defaults (``--mul_activation``,
``--add_activation``), without its weight normalisation. Each log α parametrises a hard-concrete gate (Louizos,
Welling & Kingma, ICLR 2018): u ~ U(0, 1), s = σ((log u − log(1 − u) + log α)/β), z = min(1, max(0, l + (r − l)s)),
stretched to (l, r) = (−0.1, 1.1) (Louizos's values; the authors' code uses (−0.2, 1.0), where z never reaches 1)
at temperature β = 0.2 (the authors'). Its expected L0 has the closed form
E[1(z ≠ 0)] = P(z > 0) = σ(log α − β log(−l/r)).

Combining the layers (the authors' rule). A training step draws one layer k uniformly from 0..L+1; patch j's mask
is the product of the gates up to k, m_j = Π_{i≤k} z_ij, and its expected L0 that product's probability of being
non-zero, Π_{i≤k} P(z_ij ≠ 0) (the gates are independent given the image). The masked input replaces each patch
embedding by a learned placeholder vector b (one for every patch; the position embedding stays):
h̃_0j = m_j·h_0j + (1 − m_j)·b, and the frozen model runs on it.

Loss (the Lagrangian relaxation of min E[L0] s.t. KL ≤ ε). With p = the model's prediction on the image and p̃ on
the masked input, L = λ_k·(KL(p ‖ p̃) − ε) + mean_j log Π_{i≤k} P(z_ij ≠ 0), the L0 term in log space as both
authors' codes have it, averaged over the batch. The gates and the placeholder descend on L; the multiplier λ_k
(one per layer k, starting at 20, the authors' default) ascends on it: its gradient is KL − ε, so it grows while
the masked prediction is further than ε from the original one and shrinks (down to 0, up to 200) once it is within;
Adam at learning rate 0.3 with the sign of its gradient reversed, as the authors' optimiser does it (their Lookahead
wrapper is left out; the shapes recipe, much shorter than their 20 epochs, uses 1.0: :mod:`vitx.training.diffmask`).

Attribution (the authors' ``get_mask``): the expected L0 of the full product over every layer,
a_j = Π_{i=0}^{L+1} P(z_ij ≠ 0), the probability that the patch is kept; it explains the model's predicted class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import read_checkpoint

STRETCH = (-0.1, 1.1)        # (l, r) of the hard-concrete distribution
TEMPERATURE = 0.2            # β
GATE_SCALE, GATE_SHIFT = 15.0, 8.0
EPSILON = 0.1                # the KL budget ε, in nats
MULTIPLIER_START, MULTIPLIER_MAX, MULTIPLIER_LR = 20.0, 200.0, 0.3


def log_keep_probability(log_alpha: torch.Tensor, temperature: float = TEMPERATURE,
                         stretch: tuple[float, float] = STRETCH) -> torch.Tensor:
    """log P(z ≠ 0) = log σ(log α − β log(−l/r)), elementwise: the log of a hard-concrete gate's expected L0."""
    low, high = stretch
    return F.logsigmoid(log_alpha - temperature * math.log(-low / high))


def sample_gates(log_alpha: torch.Tensor, temperature: float = TEMPERATURE, stretch: tuple[float, float] = STRETCH,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Hard-concrete samples z in [0, 1], one per element of ``log_alpha``, differentiable in log α."""
    low, high = stretch
    tiny = torch.finfo(log_alpha.dtype).eps
    u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    u = u.clamp(tiny, 1 - tiny)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (low + (high - low) * s).clamp(0, 1)


class Gate(nn.Module):
    """log α of one layer's gates, per patch, from [h_0; h_i]."""

    def __init__(self, dim: int, scale: float = GATE_SCALE, shift: float = GATE_SHIFT):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim // 4), nn.Tanh(), nn.Linear(dim // 4, 1), nn.Tanh())
        self.scale = scale
        self.shift = nn.Parameter(torch.tensor(shift))

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """(B, P, D) twice -> (B, P)."""
        return self.mlp(torch.cat([inputs, state], -1)).squeeze(-1) * self.scale + self.shift


@dataclass
class Reading:
    """One forward of the frozen ViT: its logits, the L + 2 hidden states of the patches (h_0 first), and the
    tokens entering the first block (class token and positions included)."""
    logits: torch.Tensor
    states: list[torch.Tensor]
    tokens: torch.Tensor


@torch.no_grad()
def read(net, x: torch.Tensor) -> Reading:
    """Run a vitx ``VisionTransformer`` ``net`` on ``x`` once, keeping what the gates read."""
    patches, grid = net.patch_tokens(x)
    tokens = net.place(patches, grid)
    prefix = tokens.shape[1] - patches.shape[1]
    states, h = [patches, tokens[:, prefix:]], tokens
    for block in net.blocks:
        h = block(h)
        states.append(h[:, prefix:])
    return Reading(net.forward_head(net.norm(h)), states, tokens)


def masked_logits(net, reading: Reading, mask: torch.Tensor, placeholder: torch.Tensor) -> torch.Tensor:
    """The frozen model's logits with each patch embedding h_0j replaced by m_j·h_0j + (1 − m_j)·b, the position
    embeddings and the class token as they were; ``mask`` (B, P), ``placeholder`` b (D,)."""
    patches = reading.states[0]
    prefix = reading.tokens.shape[1] - patches.shape[1]
    shift = (1 - mask)[..., None] * (placeholder - patches)
    return net.forward_head(net.norm(net.blocks(reading.tokens + F.pad(shift, (0, 0, prefix, 0)))))


def kl_to_original(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ p̃) per image, (B,), p and p̃ the softmax of the original and the masked logits."""
    log_p = original.log_softmax(-1)
    return (log_p.exp() * (log_p - masked.log_softmax(-1))).sum(-1)


class DiffMask(nn.Module):
    """The trained part of Vision DiffMask for a ViT of ``depth`` blocks and width ``dim``: L + 2 gates and the
    placeholder. The ViT itself stays outside (frozen, never changed)."""

    def __init__(self, dim: int, depth: int, temperature: float = TEMPERATURE,
                 stretch: tuple[float, float] = STRETCH):
        super().__init__()
        self.gates = nn.ModuleList(Gate(dim) for _ in range(depth + 2))
        self.placeholder = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, dim))[0])
        self.temperature, self.stretch = temperature, stretch

    def log_alpha(self, reading: Reading, layers: int | None = None) -> torch.Tensor:
        """(B, P, k) log α of the gates of the first ``layers`` layers (default: all of them)."""
        states = reading.states[:len(self.gates) if layers is None else layers]
        return torch.stack([gate(states[0], h) for gate, h in zip(self.gates, states)], -1)

    def keep_probabilities(self, reading: Reading) -> torch.Tensor:
        """(B, P, L + 2) P(z_ij ≠ 0) of every layer's gate for every patch."""
        return log_keep_probability(self.log_alpha(reading), self.temperature, self.stretch).exp()

    def attribution(self, reading: Reading) -> torch.Tensor:
        """(B, P) a_j = Π_i P(z_ij ≠ 0): the expected L0 of each patch's gate combined over every layer."""
        return log_keep_probability(self.log_alpha(reading), self.temperature, self.stretch).sum(-1).exp()

    def terms(self, net, reading: Reading, layer: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One training draw with the gates of layers 0..``layer``: KL(p ‖ p̃) per image (B,) and the log expected
        L0 of each patch's combined gate (B, P), both differentiable in the gates and the placeholder."""
        log_alpha = self.log_alpha(reading, layer + 1)
        mask = sample_gates(log_alpha, self.temperature, self.stretch, generator).prod(-1)
        log_l0 = log_keep_probability(log_alpha, self.temperature, self.stretch).sum(-1)
        return kl_to_original(reading.logits, masked_logits(net, reading, mask, self.placeholder)), log_l0


class Lagrangian:
    """The multipliers λ_k (one per layer the combined gate is cut at) of min E[L0] s.t. KL ≤ ε, trained by
    gradient ascent (Adam, maximising) and kept in [0, ``ceiling``]."""

    def __init__(self, layers: int, epsilon: float = EPSILON, start: float = MULTIPLIER_START,
                 lr: float = MULTIPLIER_LR, ceiling: float = MULTIPLIER_MAX, device=None):
        self.multipliers = [torch.tensor(start, device=device, requires_grad=True) for _ in range(layers)]
        self.optimizer = torch.optim.Adam(self.multipliers, lr=lr, maximize=True)
        self.epsilon, self.ceiling = epsilon, ceiling

    def loss(self, layer: int, kl: torch.Tensor, log_l0: torch.Tensor) -> torch.Tensor:
        """λ_k (mean KL − ε) + mean log E[L0], λ_k held constant: what the gates and the placeholder descend on."""
        return self.multipliers[layer].detach().clone() * (kl.mean() - self.epsilon) + log_l0.mean()

    @torch.no_grad()
    def ascend(self, layer: int, kl: torch.Tensor) -> None:
        """One ascent step of λ_k on the Lagrangian, whose gradient in λ_k is mean KL − ε; the others keep still."""
        multiplier = self.multipliers[layer]
        multiplier.grad = (kl.mean() - self.epsilon).detach().to(multiplier)
        self.optimizer.step()
        multiplier.grad = None
        multiplier.clamp_(0, self.ceiling)

    def values(self) -> list[float]:
        return [round(m.item(), 4) for m in self.multipliers]


def load_gates(path, device=None) -> DiffMask:
    """The trained gates and placeholder of a ``vitx train`` DiffMask checkpoint, in eval mode on ``device``."""
    state, meta = read_checkpoint(path)
    gates = DiffMask(meta["dim"], meta["depth"], meta["temperature"], tuple(meta["stretch"]))
    gates.load_state_dict(state)
    return gates.eval().to(device)
