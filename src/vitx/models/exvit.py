"""eX-ViT (Yu, Xiang, Fang, Chen & Chi, 2022, arXiv 2207.05358, eX-ViT: A Novel eXplainable Vision Transformer for
Weakly Supervised Semantic Segmentation) on vitx's ViT body.

The paper's public text (its abstract) names three parts and no formulas; there is no code. Every equation below is
OURS: the closest reading of the abstract we could build, labelled so (docs/inherent.md).

- E-MHA, explainable multi-head attention (OURS): "explainable attention weights ... from local patches in terms of
  model decisions with noise robustness" read as a per-token, per-head saliency gate on the values. Head h of token
  i outputs ``o_i^h = Σ_j A_ij^h s_j^h v_j^h`` with A = softmax(q kᵀ/√d) and ``s_j^h = σ(g_hᵀ x_j + c_h)``, so that
  the explainable weights ``Ã_ij^h = A_ij^h s_j^h`` say how much each patch reaches the decision and a patch judged
  noise (s ≈ 0) reaches nothing. It replaces the MHSA of the last ``explainable_blocks`` blocks (same q, k, v and
  output weights, plus the gate); the gate is applied to v, so the tap (:mod:`vitx.trace`) computes exactly the
  model's forward.
- AttE, attribute-guided explainer (OURS): K learned attribute queries p_k read the normed patch tokens x_n:
  attribute maps ``a_k(n) = softmax_n(p_kᵀ W x_n / √D)``, attribute features ``f_k = Σ_n a_k(n) x_n``, per-attribute
  logits ``z_k = W_c f_k + b`` and logits ``y = (1/K) Σ_k z_k``. It replaces the class-token head: the head reads the
  patches, not the class token (kept in the body, read by nothing at the output), and the config's
  ``global_pool="avg"`` tells vitx so. Since y is linear in the patch tokens, the class map
  ``M_c(n) = (1/K) Σ_k a_k(n) · w_cᵀ x_n`` sums over the patches to ``y_c − b_c`` exactly: faithful by construction.
- The attribute-guided loss (OURS; the paper calls it self-supervised and names its two mechanisms):
  discriminability ``L_dis = (1/K) Σ_k CE(z_k, y)`` (each attribute alone names the class) and diversity
  ``L_div = mean_{k≠l} cos(a_k, a_l)`` (attributes look at different patches).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .vit import Attention, ViTConfig, VisionTransformer


@dataclass(frozen=True)
class ExViTConfig(ViTConfig):
    attributes: int = 4             # AttE's attribute queries K (OURS; exvit_shapes uses 2)
    explainable_blocks: int = 1     # the last blocks whose MHSA is E-MHA (OURS)
    global_pool: str = "avg"        # the head reads the patch tokens (through AttE), not the class token


class ExplainableAttention(Attention):
    """E-MHA (OURS, module docstring): vitx's MHSA with a saliency gate s (B, heads, N) on each key token's value."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__(dim, num_heads, qkv_bias)
        self.gate = nn.Linear(dim, num_heads)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 3.0)   # s ≈ 0.95 everywhere: starts as the MHSA it replaces (OURS)

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """s_j^h = σ(g_hᵀ x_j + c_h), (B, heads, N), of the block's normed input x (B, N, D)."""
        return torch.sigmoid(self.gate(x)).transpose(1, 2)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().split_heads(x)
        return q, k, v * self.saliency(x)[..., None]

    def explainable_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Ã_ij^h = A_ij^h s_j^h (B, heads, N, N): how much key j reaches query i's output in head h."""
        q, k, _ = Attention.split_heads(self, x)
        return (q @ k.transpose(-2, -1) * self.scale).softmax(-1) * self.saliency(x)[:, :, None, :]


class AttributeExplainer(nn.Module):
    """AttE (OURS, module docstring): K attribute queries and their key projection W."""

    def __init__(self, dim: int, attributes: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(attributes, dim))
        self.key = nn.Linear(dim, dim)
        self.scale = dim ** -0.5

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (B, N, D) -> attribute maps a (B, K, N) (each sums to 1 over the patches) and attribute
        features f (B, K, D)."""
        maps = (self.queries @ self.key(patches).transpose(1, 2) * self.scale).softmax(-1)
        return maps, maps @ patches


class ExViT(VisionTransformer):
    """vitx's ViT with E-MHA in its last ``explainable_blocks`` blocks and AttE as its head (module docstring)."""

    def __init__(self, cfg: ExViTConfig):
        if cfg.global_pool != "avg" or not 1 <= cfg.explainable_blocks <= cfg.depth or cfg.attributes < 1:
            raise ValueError(f"eX-ViT needs global_pool 'avg', 1..depth explainable blocks and >= 1 attribute; "
                             f"got {cfg}")
        super().__init__(cfg)
        for block in self.blocks[cfg.depth - cfg.explainable_blocks:]:
            block.attn = ExplainableAttention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.explainer = AttributeExplainer(cfg.embed_dim, cfg.attributes)

    def attributes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The output of :meth:`forward_features` (B, prefix + N, D) -> attribute maps a (B, K, N), per-attribute
        logits z (B, K, classes) and the normed patch tokens (B, N, D)."""
        patches = self.fc_norm(x[:, self.num_prefix_tokens:])
        maps, features = self.explainer(patches)
        return maps, self.head(features), patches

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.attributes(x))

    @staticmethod
    def logits(attributes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The output of :meth:`attributes` -> the class logits (B, classes): the mean of the attributes' logits."""
        return attributes[1].mean(1)

    def class_maps(self, attributes: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output of :meth:`attributes` and classes (B,) -> each target's class map
        M_t(n) = (1/K) Σ_k a_k(n) w_tᵀ x_n (B, N), which sums to y_t − b_t, and the attribute maps (B, K, N)."""
        maps, _, patches = attributes
        evidence = (patches * self.head.weight[targets][:, None, :]).sum(-1)
        return maps.mean(1) * evidence, maps


def discriminability_loss(attribute_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_dis = (1/K) Σ_k CE(z_k, y) (OURS): every attribute's own logits (B, K, classes) name the class."""
    B, K, C = attribute_logits.shape
    return F.cross_entropy(attribute_logits.reshape(B * K, C), labels.repeat_interleave(K))


def diversity_loss(maps: torch.Tensor) -> torch.Tensor:
    """L_div = mean over images and ordered pairs k ≠ l of cos(a_k, a_l) (OURS), attribute maps (B, K, N), K ≥ 2;
    0 when no two attributes share a patch, 1 when all are the same map."""
    K = maps.shape[1]
    unit = F.normalize(maps, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    off = ~torch.eye(K, dtype=torch.bool, device=maps.device)
    return cos[:, off].mean()
