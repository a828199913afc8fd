"""DynamicViT (Rao et al., NeurIPS 2021, DynamicViT: Efficient Vision Transformers with Dynamic Token
Sparsification), on a vitx ViT.

Before each pruning block a prediction module scores the patch tokens still present. With z_i the token's
features after LN and a linear layer with GELU, split in halves: local z_i^loc and a global summary of the kept
tokens, z^glob = Σ_j D_j z_j^glob / Σ_j D_j (Eq. 2), the module gives π_i = softmax(MLP([z_i^loc, z^glob])) ∈ R²,
(keep, drop) probabilities (Eq. 3).
Training: D ← D ⊙ GumbelSoftmax(π)_keep, a hard sample with straight-through gradients (Eq. 4, 5); dropped
tokens stay in the batch and are masked out of every later attention (:func:`vitx.pruning.blocks.policy_softmax`).
The loss (Eq. 10-14) is L = CE(y, ŷ) + λ_KL KL(teacher ‖ ŷ) + λ_distill MSE over the tokens kept to the end
against the teacher's + λ_ratio Σ_s (ρ_s − mean_i D_i^s)² / S, with λ_ratio 2, λ_KL = λ_distill = 0.5 and
ρ_s = ρ^s, as the authors' DeiT recipe.
Inference: before stage s the top ⌊P ρ^s⌋ patch tokens by keep probability stay (of the P the image started with)
and the rest leave the sequence; the class token always stays.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import gather, run_block
from .stages import Stage


class ScorePredictor(nn.Module):
    """π = the (keep, drop) log-probabilities of each patch token, from its own half and the kept tokens' mean half."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                 nn.Linear(dim // 4, 2))

    def forward(self, tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """tokens (B, n, D), kept (B, n) the current decisions D -> (B, n, 2) log-probabilities (keep, drop)."""
        z = self.embed(tokens)
        local, glob = z.chunk(2, dim=-1)
        weights = kept[..., None].to(z.dtype)
        summary = (glob * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1e-6)
        return self.out(torch.cat([local, summary.expand_as(glob)], -1)).log_softmax(-1)


class DynamicViT(nn.Module):
    """A vitx ``VisionTransformer`` (``vit``) with a :class:`ScorePredictor` before each block of ``stages``.
    ``ratio`` ρ: the share of the patches kept at the first stage (ρ^s at stage s)."""

    def __init__(self, vit: nn.Module, stages: tuple[int, ...], ratio: float):
        super().__init__()
        self.vit, self.stages, self.ratio = vit, tuple(stages), ratio
        self.predictors = nn.ModuleList(ScorePredictor(vit.cfg.embed_dim) for _ in stages)

    def forward(self, x: torch.Tensor, ratio: float | None = None):
        """Training mode: (logits, final patch tokens (B, P, D), final decisions (B, P), per-stage decisions).
        Eval mode: (logits, stages: list of :class:`~vitx.pruning.stages.Stage`), with keep ratio ``ratio``
        (default: the trained ρ)."""
        if self.training:
            return self._train_forward(x)
        return self.prune(x, self.ratio if ratio is None else ratio)

    def _train_forward(self, x: torch.Tensor):
        vit, prefix = self.vit, self.vit.num_prefix_tokens
        tokens = vit.embed(x)
        B, P = tokens.shape[0], tokens.shape[1] - prefix
        decision = tokens.new_ones(B, P)
        policy, decisions = None, []
        for i, block in enumerate(vit.blocks):
            if i in self.stages:
                scores = self.predictors[self.stages.index(i)](tokens[:, prefix:], decision)
                decision = F.gumbel_softmax(scores, hard=True)[..., 0] * decision
                decisions.append(decision)
                policy = torch.cat([decision.new_ones(B, prefix), decision], 1)
            tokens, _ = run_block(block, tokens, policy)
        tokens = vit.norm(tokens)
        return vit.forward_head(tokens), tokens[:, prefix:], decision, decisions

    def prune(self, x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, list[Stage]]:
        vit, prefix = self.vit, self.vit.num_prefix_tokens
        tokens = vit.embed(x)
        B, P = tokens.shape[0], tokens.shape[1] - prefix
        index = torch.arange(P, device=x.device).expand(B, P)
        stages = []
        for i, block in enumerate(vit.blocks):
            if i in self.stages:
                s = self.stages.index(i)
                patches = tokens[:, prefix:]
                keep = self.predictors[s](patches, patches.new_ones(patches.shape[:2]))[..., 0].exp()
                top = keep.topk(max(1, int(P * ratio ** (s + 1))), dim=1).indices
                stages.append(Stage(i, index, keep, gather(index, top)))
                tokens = torch.cat([tokens[:, :prefix], gather(patches, top)], 1)
                index = gather(index, top)
            tokens = block(tokens)
        return vit.forward_head(vit.norm(tokens)), stages


def dynamicvit_loss(outputs, labels: torch.Tensor, teacher_logits: torch.Tensor, teacher_tokens: torch.Tensor,
                    ratio: float, ratio_weight: float = 2.0, distill_weight: float = 0.5) -> torch.Tensor:
    """The DynamicViT objective (module docstring) from a training forward's ``outputs`` and the frozen
    teacher's logits and final patch tokens."""
    logits, tokens, final, decisions = outputs
    targets = torch.tensor([ratio ** (s + 1) for s in range(len(decisions))], device=logits.device)
    kept = torch.stack([d.mean(1) for d in decisions], 1)                          # (B, S)
    ratio_loss = ((kept - targets) ** 2).mean(0).sum() / len(decisions)
    kl = F.kl_div(logits.log_softmax(-1), teacher_logits.log_softmax(-1), reduction="batchmean", log_target=True)
    mask = final > 0.5
    token_loss = ((tokens[mask] - teacher_tokens[mask]) ** 2).mean() if mask.any() else logits.new_zeros(())
    return F.cross_entropy(logits, labels) + ratio_weight * ratio_loss + distill_weight * (kl + token_loss)
