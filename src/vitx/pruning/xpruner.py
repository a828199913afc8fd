"""X-Pruner (Yu & Xiang, CVPR 2023, X-Pruner: eXplainable Pruning for Vision Transformers) on vitx's own ViT.

Sources: the paper's abstract (the official repository is empty) and two unofficial reproductions read as references
(LeoMinty/Xpruner-reproduction, elmoprimmer/XPruner); every formula they leave open is vitx's choice, said below
and in docs/pruning.md (X-Pruner).

Units. Per block l, the attention's context channels (head h, channel j: U = heads x head_dim, the input of the
output projection, i.e. what a head-dim channel of head h carries) and the MLP's hidden neurons. The paper's units are
the heads' channels; it does not say whether the MLP's neurons count too (the stored reproductions mask attention
only). vitx counts them: on ``shapes-vit`` the attention side is ~40% of a block's FLOPs, so a >= 30% cut of the
whole model cannot come from attention alone.

Explainability-aware masks. One mask row per class and unit,
M_l = σ(Θ_l) ∈ (0, 1)^{C×U_l} (the paper leaves the parameterisation open; vitx: a sigmoid of free logits, Θ = 3
at the start, so M ≈ 0.95). An image of class y runs with its class's row: the unit's output is scaled,
    ctx_l[:, h, :, j] ← M_l[y, (h, j)] · ctx_l[:, h, :, j],   hidden_l[:, :, u] ← M_l[y, u] · hidden_l[:, :, u],
which equals scaling the unit's weights (the value row of channel (h, j); fc2's column of neuron u), so a binary row
is the network with those units zeroed (for a neuron, equally its fc1 row and bias: GELU(0) = 0). In mask learning y is the label; when explaining, the target.

Mask learning, backbone frozen:  L = CE(f(x; M_y), y) + λ_s · L_sparse + λ_t · L_smooth.
The paper names a sparsity and a smoothness term; what we could read does not fix them. vitx:
    L_sparse = mean over layers, classes and units of M (an L1 norm: M > 0),
    L_smooth = mean of (M[u-1] − 2 M[u] + M[u+1])² along each head's channels (a 1-D Laplacian, as the
               reproduction elmoprimmer/XPruner reads it; MLP neurons have no order, so no smoothness there),
λ_s = 0.5, λ_t = 0.1 (:data:`SPARSITY`, :data:`SMOOTHNESS`).

Layer-wise rates under a FLOPs target. A unit's importance is the sum of its mask over the classes,
s_u = Σ_c |M_{c,u}| (the paper's ranking by the absolute sum of the masks). The paper learns a threshold θ_l per
layer by gradient with a soft step and a Lagrangian loss on the remaining cost (as the reproduction
LeoMinty/Xpruner-reproduction reads its Eq. 10-11); vitx searches instead: units leave in increasing order of
s_u (attention and MLP units of every layer in one ranking) until the model's FLOPs (a closed form that
:func:`vitx.flops.count_flops` confirms on the pruned model) are at most ``target`` x the original's. The layer-wise
threshold θ_l is then the score of the last unit layer l lost, and its rate the share it lost. A head whose channels
all leave takes its query and key rows with it.

The structural prune (:func:`prune`) builds really smaller layers: per block, the kept heads' q and k rows, the kept
channels' value rows and projection columns, the kept neurons' fc1 rows and fc2 columns. Its forward equals the
masked forward with the binary (kept) mask. It is then fine-tuned with cross-entropy (``vitx train
shapes-vit-xpruner``).

The token map of the method ``x-pruner`` is vitx's addition, not the paper's (:func:`token_relevance`)."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitxError
from ..flops import count_flops
from .blocks import check_share

SPARSITY, SMOOTHNESS = 0.5, 0.1
MASK_START = 3.0          # Θ at the start: M = σ(3) ≈ 0.95


class ClassMasks(nn.Module):
    """The logits Θ of the class-wise masks: ``attn`` (depth, C, heads x head_dim), ``mlp`` (depth, C, hidden)."""

    def __init__(self, depth: int, classes: int, channels: int, hidden: int):
        super().__init__()
        self.attn = nn.Parameter(torch.full((depth, classes, channels), MASK_START))
        self.mlp = nn.Parameter(torch.full((depth, classes, hidden), MASK_START))

    @classmethod
    def like(cls, vit) -> "ClassMasks":
        return cls(len(vit.blocks), vit.head.out_features, vit.cfg.embed_dim, vit.blocks[0].mlp.fc1.out_features)

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """M = σ(Θ): (depth, C, U) for attention and for the MLP."""
        return self.attn.sigmoid(), self.mlp.sigmoid()

    def rows(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's class row: (depth, B, U) for attention and for the MLP."""
        attn, mlp = self.values()
        return attn[:, labels], mlp[:, labels]

    def regulariser(self, heads: int) -> torch.Tensor:
        """λ_s L_sparse + λ_t L_smooth (module docstring)."""
        attn, mlp = self.values()
        sparse = torch.cat([attn.flatten(), mlp.flatten()]).mean()
        channels = attn.unflatten(-1, (heads, -1))
        smooth = (channels[..., :-2] - 2 * channels[..., 1:-1] + channels[..., 2:]).pow(2).mean()
        return SPARSITY * sparse + SMOOTHNESS * smooth


def masked_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor, mlp_mask: torch.Tensor) -> torch.Tensor:
    """A vitx ``Block`` with its context channels (h x head_dim + j) scaled by ``attn_mask`` and its hidden neurons
    by ``mlp_mask``, each broadcast to the units' (B, N, U): (U,) for every image, (B, 1, U) per image, (B, N, U)
    per token."""
    attn = block.attn
    context = F.scaled_dot_product_attention(*attn.split_heads(block.norm1(x)))
    x = x + block.ls1(attn.proj(context.transpose(1, 2).flatten(2) * attn_mask))
    hidden = block.mlp.act(block.mlp.fc1(block.norm2(x))) * mlp_mask
    return x + block.ls2(block.mlp.fc2(hidden))


def masked_forward(vit: nn.Module, x: torch.Tensor, attn: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
    """Logits of a vitx ViT with every block's units scaled: ``attn`` and ``mlp`` hold a mask per block (first
    dimension), each as :func:`masked_block` takes it, or (depth, B, U) for a row per image."""
    tokens = vit.embed(x)
    for block, a, m in zip(vit.blocks, attn, mlp):
        tokens = masked_block(block, tokens, a[:, None] if a.dim() == 2 else a, m[:, None] if m.dim() == 2 else m)
    return vit.forward_head(vit.norm(tokens))


def unit_table(masks: ClassMasks, classes: torch.Tensor | list[int] | None = None) -> dict[str, torch.Tensor]:
    """The class-by-unit table, M = σ(Θ) (detached): ``{"attn": (C', depth, heads x head_dim), "mlp": (C', depth,
    hidden)}`` for ``classes`` (default: every class). A class outside the table: a VitxError."""
    attn, mlp = (m.detach().transpose(0, 1) for m in masks.values())
    if classes is None:
        return {"attn": attn, "mlp": mlp}
    index = torch.as_tensor(classes, dtype=torch.long).flatten().cpu()
    if len(index) and (index.min() < 0 or index.max() >= len(attn)):
        raise VitxError(f"class {index[(index < 0) | (index >= len(attn))][0].item()} is outside X-Pruner's tables, "
                        f"which have classes 0..{len(attn) - 1}")
    return {"attn": attn[index.to(attn.device)], "mlp": mlp[index.to(attn.device)]}


def unit_forward(vit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model as it is, run through :func:`masked_forward` with masks of ones per token ((depth, B, N, U) for
    attention and for the MLP, requiring grad), so that a gradient at the masks is a ∂z/∂a per unit and token."""
    B, N = x.shape[0], vit.grid_size[0] * vit.grid_size[1] + vit.num_prefix_tokens
    units = (vit.cfg.embed_dim, vit.blocks[0].mlp.fc1.out_features)
    with torch.enable_grad():
        ones = [torch.ones(len(vit.blocks), B, N, u, device=x.device, dtype=x.dtype, requires_grad=True)
                for u in units]
        return masked_forward(vit, x, *ones), ones


def token_relevance(logits: torch.Tensor, ones: list[torch.Tensor], rows: dict[str, torch.Tensor],
                    targets: torch.Tensor) -> torch.Tensor:
    """vitx's addition, not the paper's: each token's relevance through the target's units (B, N),
    r_n = Σ_l Σ_u M_l[y, u] · a_{l,n,u} ∂z_y/∂a_{l,n,u}, gradient x activation of every unit at every token weighted
    by the class's mask, from :func:`unit_forward`'s logits and masks of ones; ``rows``: the targets' rows of the
    table (:func:`unit_table`)."""
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), ones)
    return sum((g * rows[k].transpose(0, 1)[:, :, None]).sum((0, 3)) for g, k in zip(grads, ("attn", "mlp"))).detach()


def importance(masks: ClassMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """s_u = Σ_c |M_{c,u}|: (depth, U) for attention and for the MLP."""
    attn, mlp = masks.values()
    return attn.abs().sum(1).detach(), mlp.abs().sum(1).detach()


def class_units(masks: ClassMasks) -> torch.Tensor:
    """(C, units) booleans: the units each class keeps, M ≥ 0.5 (every layer's attention channels, then its
    neurons)."""
    attn, mlp = masks.values()
    return torch.cat([attn.transpose(0, 1).flatten(1), mlp.transpose(0, 1).flatten(1)], 1) >= 0.5


def mean_jaccard(masks: ClassMasks) -> float:
    """Mean over pairs of classes of |K_a ∩ K_b| / |K_a ∪ K_b|, K_c the units class c keeps (:func:`class_units`)."""
    kept = class_units(masks).float()
    inter, union = kept @ kept.T, kept.sum(1)[:, None] + kept.sum(1)[None] - kept @ kept.T
    pairs = torch.triu_indices(len(kept), len(kept), 1)
    return (inter / union.clamp(min=1))[pairs[0], pairs[1]].mean().item()


def block_flops(tokens: int, dim: int, head_dim: int, heads: int, channels: int, neurons: int) -> int:
    """FLOPs of one pruned block on ``tokens`` tokens (a multiply-add counts 2; norms and activations not counted, as
    ``torch.utils.flop_counter`` counts them): q and k of the kept heads, their scores, the kept value channels,
    their weighted sum and projection, the kept neurons' two layers."""
    qk = 2 * tokens * dim * 2 * heads * head_dim + 2 * heads * tokens * tokens * head_dim
    values = 2 * tokens * dim * channels + 2 * tokens * tokens * channels + 2 * tokens * channels * dim
    return qk + values + 4 * tokens * dim * neurons


def layer_plan(vit: nn.Module, masks: ClassMasks, target: float) -> dict:
    """The units kept per layer under FLOPs ``target`` (module docstring): ``{"attn": [[channels] per layer],
    "mlp": [[neurons] per layer], "thresholds": {"attn": [θ_l], "mlp": [θ_l]}}``."""
    target = check_share(target, "FLOPs")
    attn_score, mlp_score = importance(masks)
    depth, channels = attn_score.shape
    heads, head_dim = vit.blocks[0].attn.num_heads, vit.blocks[0].attn.head_dim
    dim, tokens = vit.cfg.embed_dim, vit.grid_size[0] * vit.grid_size[1] + vit.num_prefix_tokens
    keep_attn = torch.ones_like(attn_score, dtype=torch.bool)
    keep_mlp = torch.ones_like(mlp_score, dtype=torch.bool)

    def cost(layer: int) -> int:
        live = keep_attn[layer].view(heads, head_dim)
        return block_flops(tokens, dim, head_dim, int(live.any(1).sum()), int(live.sum()), int(keep_mlp[layer].sum()))

    total = depth * block_flops(tokens, dim, head_dim, heads, channels, mlp_score.shape[1])
    rest = outside_blocks(vit)
    budget = target * (total + rest) - rest
    scores = torch.cat([attn_score.flatten(), mlp_score.flatten()])
    thresholds = {"attn": [0.0] * depth, "mlp": [0.0] * depth}
    for index in scores.argsort().tolist():
        if total <= budget:
            break
        kind, flat = ("attn", index) if index < attn_score.numel() else ("mlp", index - attn_score.numel())
        layer, unit = divmod(flat, channels if kind == "attn" else mlp_score.shape[1])
        before = cost(layer)
        (keep_attn if kind == "attn" else keep_mlp)[layer, unit] = False
        total += cost(layer) - before
        thresholds[kind][layer] = round(scores[index].item(), 6)
    return {"attn": [torch.nonzero(k).flatten().tolist() for k in keep_attn],
            "mlp": [torch.nonzero(k).flatten().tolist() for k in keep_mlp], "thresholds": thresholds}


def outside_blocks(vit: nn.Module) -> int:
    """FLOPs of one image through everything but the blocks (the stem, the head), counted, so that the target is a
    share of the whole model's FLOPs."""
    size = vit.cfg.image_size
    x = torch.zeros(1, vit.cfg.in_chans, size, size, device=vit.pos_embed.device)
    return count_flops(lambda t: vit.forward_head(vit.norm(vit.embed(t))), x)


def binary_masks(vit: nn.Module, plan: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan's kept units as 0/1 masks (depth, U) for attention and for the MLP."""
    depth, device = len(vit.blocks), vit.pos_embed.device
    attn = torch.zeros(depth, vit.cfg.embed_dim, device=device)
    mlp = torch.zeros(depth, vit.blocks[0].mlp.fc1.out_features, device=device)
    for layer in range(depth):
        attn[layer, plan["attn"][layer]] = 1
        mlp[layer, plan["mlp"][layer]] = 1
    return attn, mlp


class SlimAttention(nn.Module):
    """Attention over the kept heads, each with its kept value channels: ``qk`` gives q and k of ``head_dim`` per kept
    head, ``v`` and ``proj``'s input only the kept channels (``widths``: per kept head, its number of value
    channels)."""

    def __init__(self, qk: nn.Linear, v: nn.Linear, proj: nn.Linear, head_dim: int, widths: list[int]):
        super().__init__()
        self.qk, self.v, self.proj = qk, v, proj
        self.head_dim, self.widths, self.scale = head_dim, list(widths), head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k = self.qk(x).view(B, N, 2, len(self.widths), self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        probs = (torch.matmul(q, k.transpose(-2, -1)) * self.scale).softmax(-1)
        values = self.v(x).split(self.widths, -1)
        parts = [torch.matmul(probs[:, h], v) for h, v in enumerate(values)]
        return self.proj(torch.cat(parts, -1) if parts else x.new_zeros(B, N, 0))


def cut(layer: nn.Linear, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding ``layer``'s output ``rows`` and input ``columns`` (None: all)."""
    weight = layer.weight if rows is None else layer.weight[rows]
    weight = weight if columns is None else weight[:, columns]
    with warnings.catch_warnings():      # a layer left with no unit: torch warns that it cannot initialise it
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=layer.bias is not None,
                                 device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias if rows is None else layer.bias[rows])
    return new


def slim_block(block: nn.Module, channels: list[int], neurons: list[int]) -> None:
    """Replace ``block``'s attention and MLP layers by smaller ones holding only the kept units (channels indexed
    h x head_dim + j, neurons of fc1), their weights copied."""
    attn, mlp = block.attn, block.mlp
    dim, hd, device = attn.qkv.in_features, attn.head_dim, attn.qkv.weight.device
    heads = sorted({c // hd for c in channels})
    widths = [sum(1 for c in channels if c // hd == h) for h in heads]
    rows = [h * hd + j for h in heads for j in range(hd)]
    index = lambda units: torch.as_tensor(units, dtype=torch.long, device=device)
    qk = cut(attn.qkv, index(rows + [dim + r for r in rows]))
    v = cut(attn.qkv, index([2 * dim + c for c in channels]))
    block.attn = SlimAttention(qk, v, cut(attn.proj, columns=index(channels)), hd, widths)
    mlp.fc1, mlp.fc2 = cut(mlp.fc1, index(neurons)), cut(mlp.fc2, columns=index(neurons))


def prune(vit: nn.Module, plan: dict) -> nn.Module:
    """The structural prune, in place: every block of ``vit`` (a vitx ViT) keeps only the plan's units."""
    depth = len(vit.blocks)
    if len(plan["attn"]) != depth or len(plan["mlp"]) != depth:
        raise VitxError(f"a pruning plan for {len(plan['attn'])} blocks does not fit a ViT of {depth}")
    for block, channels, neurons in zip(vit.blocks, plan["attn"], plan["mlp"]):
        slim_block(block, channels, neurons)
    return vit


class XPrunerTwin(nn.Module):
    """What ``vitx train shapes-vit-xpruner`` ships: the pruned, fine-tuned ViT (``vit``) and the class masks learned on
    the frozen original (``masks``), which are the explanation."""

    def __init__(self, vit: nn.Module, masks: ClassMasks):
        super().__init__()
        self.vit, self.masks = vit, masks.requires_grad_(False)

    @classmethod
    def saved(cls, vit: nn.Module, meta: dict) -> "XPrunerTwin":
        """The twin's layout from the saved metadata (the kept units ``attn`` and ``mlp`` per layer) on the unpruned
        ``vit``, for its state to be loaded into (:func:`vitx.methods.pruning.twins.load_pruned`)."""
        masks = ClassMasks.like(vit)              # before the prune, which cuts ``vit``'s layers in place
        return cls(prune(vit, meta), masks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)
