"""IA-RED² (Pan, Panda, Jiang, Wang, Feris & Oliva, NeurIPS 2021, IA-RED²: Interpretability-Aware Redundancy
Reduction for Vision Transformers): a ViT that drops the patch tokens a learnt policy finds uninformative, group of
blocks by group of blocks, and whose policy is its explanation.

**Groups.** The L blocks are split into D consecutive groups; before group g a *multi-head interpreter* scores
every token still alive. For ``shapes-vit`` (L = 6) we use D = 3 groups of 2 blocks, interpreters before blocks
0, 2 and 4 (:data:`STAGES`, the framework's stages): the
authors' interpreter copies split DeiT's 12 blocks into 3 groups of 4, i.e. the same 3 decisions at the same
relative depths (before blocks 0, L/3, 2L/3); one interpreter per block would add decisions too close together
to drop anything new, and 2 groups would leave a single late chance to refine the first, coarse decision.

**Interpreter** (one per group, H heads as the backbone's, d = D_model / H): with a_j ∈ {0, 1} the tokens alive
before the group (a_cls = 1), x̂ = LN(a ⊙ x) (a LayerNorm without affine weights), q^h = W_q^h x̂_cls,
k_j^h = W_k^h x̂_j and the keep probability of token j

    p_j = a_j · (1/H) Σ_h σ(q^h · k_j^h / √d)

(written as the authors' interpreter copies compute it: InfoLab-SKKU/AdViT and joon-stack/ltrp on GitHub).

**Hard policy.** While training, u_j ~ Bernoulli(p_j); at inference u_j = 1[p_j > 0.5]. The class token (and any
other prefix token) is always kept; a dropped token stays dropped (u_j ≤ a_j, so the next group's a = u).

**Forward with the policy.** Training keeps the sequence and masks the dropped tokens out as keys of every attention
of the group (:func:`vitx.pruning.blocks.run_block`; a dropped token still attends to itself, so no row is empty,
and no kept token ever reads it, so the kept tokens' values are those of running on them alone). Inference runs on
the kept tokens only: the images of a batch keep different counts, so each group gathers every image's kept tokens
(class token first) to the batch's largest count and masks the padding slots through the policy.

**Reward and REINFORCE** (Williams 1992; the reward of BlockDrop, Wu et al., CVPR 2018, which IA-RED² adopts;
the paper's method text was not at hand here, only its project page and the authors' interpreter copies, so its
form follows BlockDrop and issue 16):

    R(u) = 1 − s(u)²   if the prediction under u is right,   −τ otherwise,
    s(u) = Σ_g (L_g / L) · |u_g|_0 / P                        (the share of patch-token blocks still computed)
    ∇_θ J = E_u[(R(u) − b) ∇_θ log π_θ(u)],   log π_θ(u) = Σ_g Σ_{j alive, j ≠ cls} log(p_j^{u_j} (1 − p_j)^{1 − u_j})

**Choices the paper leaves open, and ours.**
- s(u): the efficiency term is a share of the tokens kept; with D groups we weigh each group's share by its blocks
  (the authors' interpreter copies compute the same weighted share as their "flops" output), so R rewards
  computation saved, not decisions.
- τ = 5 (:data:`TAU`). The authors' copies carry an error penalty of −1; on shapes τ = 1 settled at about 20% of
  the patches kept and 0.90 accuracy in a probe run (a token whose drop costs under 0.4% of accuracy pays for itself
  when errors cost 1 + τ = 2), τ = 5 at about 37% and 0.99 after the backbone's fine-tuning.
- The baseline b: the reward of the thresholded (inference) policy on the same image, the self-critical baseline
  of BlockDrop, whose reward IA-RED² adopts; the paper names none.
- Training schedule (:mod:`vitx.training.iared2`): the interpreters first, backbone frozen, in a curriculum that
  switches on group g at step g·S₁/D (the groups not yet on keep what the last active group kept; the authors'
  copies carry such a curriculum step); then the backbone fine-tuned with cross-entropy under the thresholded
  policy with the interpreters frozen, at 1/5 of the interpreters' learning rate. The backbone's BatchNorm (its
  convolutional stem) keeps its statistics. One Bernoulli sample of the policy per image and step.
- The map. The paper's heatmaps are an interpreter's keep probabilities (the authors' interpretation tool draws
  those of one interpreter, 0 for the tokens dropped before it): :func:`interpreter_map` of group ``group``, by
  default 0, the one interpreter that scores every patch (on ``shapes-vit``'s twin it also makes every drop: the
  later ones keep all it kept). ``group=None`` gives the survival map of the other pruning methods
  (:func:`vitx.pruning.stages.survival_map`): groups survived plus the keep probability at the last group that
  scored the patch, which orders patches by how long they were kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import VitxError
from .blocks import gather, run_block
from .stages import Stage

STAGES = (0, 2, 4)   # the blocks before which the interpreters sit on shapes-vit's 6 blocks: 3 groups of 2
TAU = 5.0            # the reward of a wrong prediction is −τ
THRESHOLD = 0.5      # inference keeps a token when its keep probability exceeds this
START_LOGIT = 2.0    # each head's σ-argument for every token at the start: keep probability σ(2) ≈ 0.88


class Interpreter(nn.Module):
    """The multi-head interpreter: per token, the mean over heads of σ(class-token query · token key / √d)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise VitxError(f"the interpreter's {heads} heads do not divide the token width {dim}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.qk = nn.Linear(dim, 2 * dim)
        nn.init.trunc_normal_(self.qk.weight, std=0.02)
        nn.init.constant_(self.qk.bias, (START_LOGIT / math.sqrt(dim // heads)) ** 0.5)

    def forward(self, x: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """Keep probabilities (B, N) of tokens ``x`` (B, N, D), zero where ``alive`` (B, N) is 0."""
        B, N, D = x.shape
        alive = alive.to(x.dtype)
        q, k = self.qk(self.norm(x * alive[..., None])).view(B, N, 2, self.heads, D // self.heads).unbind(2)
        scores = torch.einsum("bhd,bnhd->bhn", q[:, 0], k) * (D // self.heads) ** -0.5
        return scores.sigmoid().mean(1) * alive


@dataclass
class Rollout:
    """One pass with the policy, every tensor at the tokens' original positions (class token at 0):
    ``probs``, ``alive`` (tokens alive before the group) and ``kept`` (after it), each (D, B, N)."""
    logits: torch.Tensor
    probs: torch.Tensor
    alive: torch.Tensor
    kept: torch.Tensor


class IARed2(nn.Module):
    """A vitx ``VisionTransformer`` (``vit``, with a class token read by its head) and an interpreter before each
    block of ``stages``, the first 0: each starts a group that runs to the next (``groups``: their block counts). The
    prefix tokens (class, distillation, registers) always stay; the class token's query scores the patches. IA-RED²
    has no keep ratio (its interpreters decide how many tokens stay): ``ratio`` is there for the framework's twins'
    signature and must be None."""

    def __init__(self, vit: nn.Module, stages: tuple[int, ...] = STAGES, ratio: float | None = None):
        super().__init__()
        depth = len(vit.blocks)
        stages = tuple(stages)
        if not stages or stages[0] != 0 or list(stages) != sorted(set(stages)) or stages[-1] >= depth:
            raise VitxError(f"IA-RED²'s stages must be increasing blocks from 0 (an interpreter before the first "
                            f"block) within the model's {depth}; got {stages}")
        if ratio is not None:
            raise VitxError("IA-RED² has no keep ratio: its interpreters decide how many tokens stay")
        if vit.cls_token is None or vit.cfg.global_pool != "token":
            raise VitxError("IA-RED² needs a ViT with a class token that its head reads")
        self.vit, self.stages, self.prefix = vit, stages, vit.num_prefix_tokens
        self.groups = tuple(end - start for start, end in zip(stages, (*stages[1:], depth)))
        self.interpreters = nn.ModuleList(Interpreter(vit.cfg.embed_dim, vit.cfg.num_heads) for _ in stages)

    def spans(self) -> list[tuple[int, nn.Sequential]]:
        """Each group's first block index and its blocks."""
        return [(start, self.vit.blocks[start:start + size]) for start, size in zip(self.stages, self.groups)]

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.norm(tokens))

    def rollout(self, x: torch.Tensor, sample: bool, active: int | None = None) -> Rollout:
        """The training pass: all tokens stay in the sequence, the dropped ones masked as keys. ``sample``: Bernoulli
        decisions (else the thresholded policy); ``active``: the groups whose interpreters decide (the rest keep
        what the last active one kept; default all)."""
        tokens = self.vit.embed(x)
        alive = torch.ones(tokens.shape[:2], dtype=tokens.dtype, device=tokens.device)
        probs, alives, kepts = [], [], []
        for g, (interpreter, (_, blocks)) in enumerate(zip(self.interpreters, self.spans())):
            p = interpreter(tokens, alive)
            kept = alive
            if active is None or g < active:
                kept = (torch.bernoulli(p.detach()) if sample else (p > THRESHOLD).to(p.dtype)) * alive
                kept[:, :self.prefix] = 1
            probs.append(p), alives.append(alive), kepts.append(kept)
            alive = kept
            for block in blocks:
                tokens, _ = run_block(block, tokens, alive)
        return Rollout(self.head(tokens), torch.stack(probs), torch.stack(alives), torch.stack(kepts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Stage]]:
        """Inference on the kept tokens only, under the thresholded policy: the logits (B, C) and per group a
        :class:`~vitx.pruning.stages.Stage` (original patch indices scored and kept; index P pads a row).
        Gathering is stable, so the prefix tokens keep the first slots."""
        tokens = self.vit.embed(x)
        B, N, _ = tokens.shape
        position = torch.arange(N, device=x.device).expand(B, N)       # each slot's original token
        valid = torch.ones(B, N, dtype=torch.bool, device=x.device)     # the slot holds a live token, not padding
        stages = []
        for interpreter, (start, blocks) in zip(self.interpreters, self.spans()):
            p = interpreter(tokens, valid)
            keep = (p > THRESHOLD) & valid
            keep[:, :self.prefix] = True
            slots = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :int(keep.sum(1).max())]
            scored = self._patch_index(position, valid)
            tokens, position, valid = gather(tokens, slots), position.gather(1, slots), keep.gather(1, slots)
            stages.append(Stage(start, scored, p[:, self.prefix:], self._patch_index(position, valid)))
            policy = None if bool(valid.all()) else valid.to(tokens.dtype)
            for block in blocks:
                tokens, _ = run_block(block, tokens, policy)
        return self.head(tokens), stages

    def _patch_index(self, position: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, n − prefix): the original patch index of each slot after the prefix tokens', or P for padding."""
        patches = self.vit.grid_size[0] * self.vit.grid_size[1]
        return torch.where(valid[:, self.prefix:], position[:, self.prefix:] - self.prefix, patches)


def kept_share(kept: torch.Tensor, groups: tuple[int, ...], prefix: int = 1) -> torch.Tensor:
    """s(u) (B,): Σ_g (L_g / L) · (patches kept at group g) / P, from ``kept`` (D, B, N), ``prefix`` tokens first."""
    weights = torch.tensor(groups, dtype=kept.dtype, device=kept.device) / sum(groups)
    return (weights[:, None] * kept[:, :, prefix:].mean(-1)).sum(0)


def reward(correct: torch.Tensor, share: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """R (B,): 1 − s² for a right prediction, −τ for a wrong one."""
    return torch.where(correct, 1 - share ** 2, torch.full_like(share, -tau))


def log_policy(probs: torch.Tensor, decisions: torch.Tensor, alive: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """log π(u) (B,): Σ over groups and alive patch tokens (the ``prefix`` tokens' keep is no decision) of the
    Bernoulli log-likelihood of ``decisions`` under ``probs``; all (D, B, N)."""
    p = probs.clamp(1e-6, 1 - 1e-6)
    ll = torch.where(decisions > 0, p.log(), (1 - p).log()) * alive
    return ll[:, :, prefix:].sum((0, 2))


def reinforce_loss(log_prob: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The REINFORCE surrogate −mean((R − b) · log π(u)), whose gradient estimates −∇E[R]."""
    return -((rewards - baseline).detach() * log_prob).mean()


def interpreter_map(stage: Stage, patches: int) -> torch.Tensor:
    """(B, P): one interpreter's keep probabilities at the patches' original positions, 0 for the patches dropped
    before it (the heatmap of the authors' interpretation tool)."""
    return stage.score.new_zeros(stage.score.shape[0], patches + 1).scatter_(1, stage.scored, stage.score)[:, :patches]
