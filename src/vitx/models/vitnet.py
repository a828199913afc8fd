"""ViT-NeT (Kim et al., ICML 2022, ViT-NeT: Interpretable Vision Transformers with Neural Tree Decoder): a ViT whose
head is a neural tree decoder (NeT) of prototypes over the patch tokens.

A complete binary tree of depth D: internal nodes i = 0 .. 2^D − 2 (children 2i + 1 left, 2i + 2 right), leaves the
next 2^D nodes. As the authors' code (jumpsnack/ViT-NeT, ``swin_tree.py``, ``tree_elements/``):

- every node has its own feature stream over the N patch tokens: the root's is z⁰ = σ(W_a LN(x_n)) (a bias-free
  linear map to D/4 dimensions and a sigmoid), a child's is its parent's passed through the parent's context block
  for that side, z^c = σ(LN(z + W₂ GELU(LN(W₁ Σ_n a_n z_n)))), a = softmax_n(w·z_n + b) (:class:`ContextBlock`);
- internal node i holds a prototype p_i (a 1×1 patch of the stream, initialised N(0.5, 0.1)); its similarity map
  is s_i(n) = exp(−‖z^i_n − p_i‖₂) and the probability of going left is p_i^L = max_n s_i(n) (the prototype is
  present somewhere), right 1 − p_i^L. The authors' code takes s = log((d + 1)/(d + 10⁻⁴)) and p^L = max_n s, which
  exceeds 1 (and makes 1 − p^L negative) for d < 0.58; we use ProtoTree's exp(−d), in (0, 1], so the routing is a
  probability;
- leaf ℓ's class distribution depends on the input, as the authors': q_ℓ = softmax(LN_ℓ(V_ℓ max_n z^ℓ_n + y)), y
  the backbone's own logits (its head on the class token; the authors' Swin pools the patches), or 0 where
  ``leaf_logits`` is off (our ablation: the leaves then read the tree alone);
- soft routing (training): P(c) = Σ_ℓ π_ℓ q_ℓ(c), π_ℓ the product of the branch probabilities on the way to ℓ;
  hard routing (inference): the path that goes left exactly where p_i^L > 1/2 (the authors' ``hard_forward``), and
  the prediction is that leaf's q_ℓ. The logits returned are log P (soft) or log q_ℓ (hard).

``prototype_source`` records, after the projection (:func:`vitx.training.vitnet.project_prototypes`), which training
patch each prototype was replaced by: data seed, image index, patch index (−1 before).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .vit import ViTConfig, VisionTransformer

PROTOTYPE_MEAN, PROTOTYPE_STD = 0.5, 0.1   # the authors' initialisation of the prototypes


@dataclass(frozen=True)
class ViTNeTConfig(ViTConfig):
    tree_depth: int = 3       # 2^D leaves, 2^D − 1 prototypes
    proto_dim: int = 0        # dimensions of the tree's features; 0: embed_dim // 4 (the authors')
    leaf_logits: bool = True  # the leaves add the backbone's logits (the authors'); False: they read the tree alone

    @property
    def tree_dim(self) -> int:
        return self.proto_dim or self.embed_dim // 4


@dataclass
class TreeOutput:
    """Everything the tree computed for a batch of B images, N patches, C classes."""
    similarity: torch.Tensor   # (B, internal nodes, N): s_i(n)
    left: torch.Tensor         # (B, internal nodes): p_i^L = max_n s_i(n)
    leaves: torch.Tensor       # (B, leaves, C): q_ℓ
    reach: torch.Tensor        # (B, leaves): π_ℓ, the soft routing's probability of each leaf
    path: torch.Tensor         # (B, D): the hard path's internal nodes, root first
    leaf: torch.Tensor         # (B,): the hard path's leaf (0 .. 2^D − 1)


class ContextBlock(nn.Module):
    """The authors' per-branch context block: attention-pooled context added to every token, then LN and sigmoid."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.fc1, self.norm, self.fc2 = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Linear(dim, dim)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        context = (self.score(z).softmax(1) * z).sum(1)                            # (B, dim)
        context = self.fc2(F.gelu(self.norm(self.fc1(context))))
        return torch.sigmoid(self.out_norm(z + context[:, None]))


class NeuralTree(nn.Module):
    def __init__(self, embed_dim: int, dim: int, depth: int, num_classes: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"tree_depth must be >= 1, got {depth}")
        self.depth, internal, leaves = depth, 2 ** depth - 1, 2 ** depth
        self.add_on = nn.Linear(embed_dim, dim, bias=False)
        self.contexts = nn.ModuleList(ContextBlock(dim) for _ in range(2 * internal))   # node i: 2i left, 2i + 1 right
        self.prototypes = nn.Parameter(torch.empty(internal, dim).normal_(PROTOTYPE_MEAN, PROTOTYPE_STD))
        self.leaf_heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(leaves))
        self.leaf_norms = nn.ModuleList(nn.LayerNorm(num_classes) for _ in range(leaves))
        self.register_buffer("prototype_source", torch.full((internal, 3), -1, dtype=torch.long))
        nn.init.xavier_normal_(self.add_on.weight, gain=nn.init.calculate_gain("sigmoid"))

    def streams(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """Each node's features (B, N, dim), nodes breadth-first (internal nodes, then leaves)."""
        streams = [torch.sigmoid(self.add_on(patches))]
        for child in range(1, 2 ** (self.depth + 1) - 1):
            streams.append(self.contexts[child - 1](streams[(child - 1) // 2]))
        return streams

    def forward(self, patches: torch.Tensor, logits: torch.Tensor) -> TreeOutput:
        """``patches`` (B, N, embed_dim), the backbone's ``logits`` (B, C)."""
        streams, internal = self.streams(patches), len(self.prototypes)
        z = torch.stack(streams[:internal], 1)                                      # (B, I, N, dim)
        similarity = torch.exp(-(z - self.prototypes[:, None]).norm(dim=-1))        # (B, I, N)
        left = similarity.amax(-1)
        leaves = torch.stack([norm(head(s.amax(1)) + logits).softmax(-1) for s, head, norm in
                              zip(streams[internal:], self.leaf_heads, self.leaf_norms)], 1)
        reach = left.new_ones(len(left), 1)
        for level in range(self.depth):                                             # π over the nodes of each level
            nodes = left[:, 2 ** level - 1:2 ** (level + 1) - 1]
            reach = torch.stack([reach * nodes, reach * (1 - nodes)], -1).flatten(1)
        node, path = torch.zeros(len(left), dtype=torch.long, device=left.device), []
        for _ in range(self.depth):
            path.append(node)
            node = 2 * node + 1 + (left.gather(1, node[:, None])[:, 0] <= 0.5).long()
        return TreeOutput(similarity, left, leaves, reach, torch.stack(path, 1), node - internal)


class ViTNeT(VisionTransformer):
    """vitx's ViT with ViT-NeT's tree as its head. ``routing``: "hard" (default) or "soft" at inference; training
    always routes softly."""

    def __init__(self, cfg: ViTNeTConfig):
        super().__init__(cfg)
        self.tree = NeuralTree(cfg.embed_dim, cfg.tree_dim, cfg.tree_depth, cfg.num_classes)
        self.routing = "hard"

    def decode(self, tokens: torch.Tensor) -> TreeOutput:
        """The tree on the final tokens (B, prefix + N, D)."""
        logits = super().forward_head(tokens)
        return self.tree(tokens[:, self.num_prefix_tokens:], logits if self.cfg.leaf_logits else torch.zeros_like(logits))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.decode(x))

    def logits(self, out: TreeOutput) -> torch.Tensor:
        """The tree's logits: log of the soft mixture (training, or ``routing="soft"``) or of the hard path's leaf."""
        if self.training or self.routing == "soft":
            return (out.reach[..., None] * out.leaves).sum(1).clamp_min(1e-12).log()
        return out.leaves[torch.arange(len(out.leaf), device=out.leaf.device), out.leaf].clamp_min(1e-12).log()
