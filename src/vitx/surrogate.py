"""The value function of ViT Shapley (Covert, Kim & Lee, ICLR 2023): a classifier's class probabilities
with some patches held out by attention masking, v_y(S) = softmax(g(x_S))_y, where the patches outside S
are removed as keys from every attention layer (the class token and the kept patches never see them).
A *surrogate* g is the classifier fine-tuned so that g(x_S) matches the original's prediction f(x) for
every S (their Eq. 3): min E_x E_S KL(f(x) ‖ g(x_S)), |S| uniform in 0..P, then S uniform of that size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import Model
from .trace import trace


def masked_logits(model: Model, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits (B, C) of ``x`` (B, 3, H, W) with only the patches ``keep`` (B, P) bool left in attention."""
    with trace(model, attentions=False, tokens=False, key_mask=model.layout(x).key_mask(keep)):
        return model(x)


@torch.no_grad()
def coalition_probabilities(model: Model, x: torch.Tensor, keep: torch.Tensor, images_per_pass: int = 512
                            ) -> torch.Tensor:
    """v(S) for every class: (K, B, C) class probabilities of ``x`` (B, ...) under the coalitions ``keep``
    (K, B, P), ``images_per_pass`` masked images a forward pass."""
    K, B, P = keep.shape
    flat = keep.reshape(K * B, P)
    images = x.repeat(K, 1, 1, 1)
    logits = [masked_logits(model, images[s:s + images_per_pass], flat[s:s + images_per_pass])
              for s in range(0, K * B, images_per_pass)]
    return torch.cat(logits).softmax(-1).view(K, B, -1)


def uniform_size_coalitions(images: int, players: int, generator: torch.Generator) -> torch.Tensor:
    """(images, P) bool: per image a coalition whose size is uniform in 0..P, its members uniform given the size
    (the surrogate's training distribution)."""
    size = torch.randint(players + 1, (images, 1), generator=generator)
    ranks = torch.rand(images, players, generator=generator).argsort(1).argsort(1)
    return ranks < size


def surrogate_loss(original_logits: torch.Tensor, surrogate_logits: torch.Tensor) -> torch.Tensor:
    """KL(f(x) ‖ g(x_S)) averaged over the batch, from the two models' logits."""
    return F.kl_div(surrogate_logits.log_softmax(-1), original_logits.log_softmax(-1), log_target=True,
                    reduction="batchmean")


def shapley_loss(phi: torch.Tensor, keep: torch.Tensor, values: torch.Tensor, v_none: torch.Tensor) -> torch.Tensor:
    """The amortised Shapley loss (Covert, Kim & Lee 2023, Eq. 4), all classes at once:
    mean over coalitions S, images and classes of (v(S) − v(∅) − 1_Sᵀ φ)², for normalised ``phi`` (B, P, C),
    coalitions ``keep`` (K, B, P) drawn from the Shapley kernel, their ``values`` (K, B, C) and ``v_none`` (B, C)."""
    predicted = torch.einsum("kbp,bpc->kbc", keep.to(phi.dtype), phi)
    return (values - v_none - predicted).square().mean()


__all__ = ["coalition_probabilities", "masked_logits", "shapley_loss", "surrogate_loss",
           "uniform_size_coalitions"]
