"""The attention tap: ``with vitx.trace(model) as tr: logits = model(x)``.

While the block is open, every attention module computes ``A = softmax(edit(q k^T * scale + mask))``
explicitly and the tap keeps A (B, heads, N, N) per block (or only in the blocks ``attentions`` names;
the others keep the model's own, fused attention), and each block's output tokens (B, N, D),
both still attached to the autograd graph so that gradients with respect to them can be taken.
On request it also keeps each block's input tokens (``inputs=True``) and its attention values after the
output projection (``projected_values``), both (B, N, D), the latter with rows v_j W_oᵀ such that the
attention output is Σ_j A_ij v_j W_oᵀ + b_o.
On Swin (kind "swin") each block's attention is recorded windowed, (B, heads, windows, w², w²), and its tokens as
(B, H·W, C) over its stage's map (:mod:`vitx.windows` maps windows back to the map); on NesT, (B, heads, T, N, N)
for T image blocks.
A model is a set of attention sites (:class:`Site`, from :meth:`Adapter.sites`): each names the stream of its
queries and of its keys ("image", "text", or "joint" for a single-stream bi-modal model's concatenated tokens) and
its block within its stream. ``tr.sites`` lists the recorded sites in the order the forward ran them, each with its
attention (B, heads, Nq, Nk); on a ViT they are its blocks, all "image" self-attention. Pre-softmax scores can be edited per image token as a key (``key_scale``, ``key_mask``; at the sites
whose keys are "image" tokens, so an image-text model's text tower runs untouched) or by any function
``edit(block, scores)``. Relevance rules (``rules``, a :class:`vitx.relevance.Composite`) are bound to
the model's layers while the block is open, and the attention product runs through their
:class:`AttentionProduct`. Leaving the block, normally or by an exception, removes every hook and
patched ``forward``: the model is exactly as it was. Taps do not nest: opening one on a model that has one
open (``vitx.explain`` inside a ``vitx.trace`` block included) is a :class:`VitxError`, and changes nothing.
While gradients are enabled, the tap hands the network a copy of its input (and of a bi-modal model's word
embeddings) that requires grad, so that the recorded tensors are differentiable on a model whose parameters are
frozen (``requires_grad_(False)``, the usual way to serve one); the user's parameters are never touched, and with
no gradient requested nothing more is computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapters.base import Site
from .errors import VitxError

Edit = Callable[[int, torch.Tensor], torch.Tensor]


class AttentionProduct:
    """The three steps of the attention product, ``softmax(q kᵀ · scale + mask) v``, as the tap computes them.
    Relevance rules subclass it to give a step their own backward; the values stay the same."""

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.matmul(q, k.transpose(-2, -1))

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.softmax(dim=-1)

    def mix(self, attention: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.matmul(attention, v)


PLAIN = AttentionProduct()


@dataclass(frozen=True)
class Recorded:
    """A site as the last forward ran it: its attention probabilities (B, heads, Nq, Nk), on the autograd graph."""
    site: Site
    attention: torch.Tensor


class Trace:
    def __init__(self, model, *, attentions: bool | Sequence[int] = True, tokens: bool = True,
                 projected_values: bool | Sequence[int] = False, inputs: bool = False,
                 key_scale: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                 edit: Edit | None = None, rules=None):
        from .model import as_model
        self.model = as_model(model)
        self.record_attentions, self.record_tokens = attentions, tokens
        self.record_values, self.record_inputs = projected_values, inputs
        self.key_scale, self.key_mask, self.edit = key_scale, key_mask, edit
        self.rules = rules
        self.product: AttentionProduct = PLAIN if rules is None else rules.product
        self._attentions: dict[int, torch.Tensor] = {}
        self._order: list[int] = []
        self._sites: list[Site] = []
        self._recorded: frozenset[int] = frozenset()
        self._tokens: dict[int, torch.Tensor] = {}
        self._inputs: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._projected: frozenset[int] = frozenset()
        self._undo: list[Callable[[], None]] = []

    @property
    def attentions(self) -> list[torch.Tensor]:
        """Per recorded block (every block unless ``attentions`` named some), in block order, the attention
        probabilities (B, heads, N, N) of the last forward pass."""
        return [self._attentions[i] for i in sorted(self._attentions)]

    @property
    def sites(self) -> list[Recorded]:
        """The recorded attention sites in the order the last forward ran them."""
        return [Recorded(self._sites[i], self._attentions[i]) for i in self._order]

    @property
    def tokens(self) -> list[torch.Tensor]:
        """Per block, its output tokens (B, N, D) of the last forward pass."""
        return [self._tokens[i] for i in sorted(self._tokens)]

    @property
    def inputs(self) -> list[torch.Tensor]:
        """Per block, its input tokens (B, N, D) of the last forward pass (``inputs=True``)."""
        return [self._inputs[i] for i in sorted(self._inputs)]

    @property
    def projected_values(self) -> list[torch.Tensor]:
        """Per block that ``projected_values`` names (True: every block), in block order, its attention values
        after the output projection, (B, N, D): row j is v_j W_oᵀ = Σ_h v_jh W_o,hᵀ, the vector key token j
        adds to query i's attention output with weight A_ij (the output is Σ_j A_ij v_j W_oᵀ + b_o; the bias
        b_o and any layer scale of the block are left out)."""
        return [self._values[i] for i in sorted(self._values)]

    def gradients(self, score: torch.Tensor, of: str = "attentions", retain_graph: bool = False) -> list[torch.Tensor]:
        """d score / d (attention | tokens) for every block; ``score`` sums one target logit per image,
        so each image's gradient is its own."""
        tensors = self.attentions if of == "attentions" else self.tokens
        return list(torch.autograd.grad(score, tensors, retain_graph=retain_graph))

    @property
    def edits_scores(self) -> bool:
        return any(e is not None for e in (self.key_scale, self.key_mask, self.edit))

    def __enter__(self) -> "Trace":
        adapter = self.model.adapter
        if any(isinstance(getattr(hook, "__self__", None), Trace) for hook in adapter.net._forward_pre_hooks.values()):
            raise VitxError("a vitx.trace is already open on this model, and taps do not nest: close it first "
                            "(vitx.explain opens its own)")
        if self.edits_scores and adapter.windowed:
            raise VitxError("key_scale, key_mask and edit act on the scores of one flat token sequence, and this "
                            "model attends within shifted windows: the tap cannot edit its scores")
        try:
            self._undo.append(adapter.net.register_forward_pre_hook(self._reset).remove)
            if (words := adapter.text_embedding()) is not None:   # a text stream starts there, not at the input
                self._undo.append(words.register_forward_hook(_differentiable_output).remove)
            if self.rules is not None:
                self.rules.attach(self.model, self._undo.append)
            modules = adapter.attentions()
            self._sites = adapter.sites()
            self._recorded = _blocks(self.record_attentions, len(modules))
            self._projected = _blocks(self.record_values, len(modules))
            for i, module in enumerate(modules):
                project = adapter.value_projection(module) if i in self._projected else None
                if i in self._recorded or project is not None or self.edits_scores or self.rules is not None:
                    self._patch_forward(module, adapter.attention_forward(module, partial(self._attend, i, project)))
            for i, block in enumerate(adapter.blocks()):
                if self.record_tokens:
                    self._undo.append(block.register_forward_hook(partial(self._keep_tokens, i)).remove)
                if self.record_inputs:
                    self._undo.append(block.register_forward_pre_hook(partial(self._keep_inputs, i)).remove)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch_forward(self, module: nn.Module, forward: Callable) -> None:
        missing = object()
        previous = module.__dict__.get("forward", missing)
        module.forward = forward

        def undo():
            if previous is missing:
                del module.forward
            else:
                module.forward = previous
        self._undo.append(undo)

    def _reset(self, _module, args):
        for recorded in (self._attentions, self._tokens, self._inputs, self._values, self._order):
            recorded.clear()
        if torch.is_grad_enabled():
            return tuple(_differentiable(arg) for arg in args)

    def _keep_tokens(self, index: int, _module, _inputs, output):
        self._tokens[index], output = self.model.adapter.block_tokens(output)
        return output

    def _keep_inputs(self, index: int, _module, inputs):
        self._inputs[index], first = self.model.adapter.block_tokens(inputs[0])
        return None if first is inputs[0] else (first, *inputs[1:])

    def _attend(self, index: int, project: Callable | None, q, k, v, scale: float, dropout: float = 0.0,
                mask=None) -> torch.Tensor:
        if project is not None:
            self._values[index] = project(v)
        scores = self.product.scores(q, k) * scale
        if mask is not None:         # additive, or boolean (True: attend), as torch's scaled_dot_product_attention
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        image_keys = self._sites[index].key == "image"
        if self.key_scale is not None and image_keys:
            scores = scores * _per_key(self.key_scale, scores)
        if self.key_mask is not None and image_keys:
            scores = scores.masked_fill(~_per_key(self.key_mask, scores).bool(), float("-inf"))
        if self.edit is not None:
            scores = self.edit(index, scores)
        attn = self.product.softmax(scores)
        if index in self._recorded:
            self._attentions[index] = attn
            self._order.append(index)
        if dropout:
            attn = F.dropout(attn, dropout, training=True)
        return self.product.mix(attn, v)


def _differentiable(value):
    """A floating tensor that requires no grad -> a view of it that does (the graph then reaches every
    recorded tensor, whatever the parameters require); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
        return value.detach().requires_grad_(True)
    return value


def _differentiable_output(_module, _inputs, output):
    if torch.is_grad_enabled():
        return _differentiable(output)


def _blocks(choice: bool | Sequence[int], depth: int) -> frozenset[int]:
    """Block indices to record: every block (True), none (False) or those named (negative counts from the last)."""
    if isinstance(choice, bool):
        return frozenset(range(depth) if choice else ())
    chosen = [int(i) for i in choice]
    for i in chosen:
        if not -depth <= i < depth:
            raise VitxError(f"block {i} does not exist: this model has {depth} blocks "
                            f"(0..{depth - 1} or -{depth}..-1)")
    return frozenset(i % depth for i in chosen)


def _per_key(values: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Broadcast per-key values, (N,) or (B, N), against scores (B, heads, N, N)."""
    B, N = scores.shape[0], scores.shape[-1]
    if values.dim() not in (1, 2) or values.shape[-1] != N or values.dim() == 2 and values.shape[0] not in (1, B):
        raise VitxError(f"key_scale and key_mask must be (N,) or (B, N) for {B} images of N={N} tokens, "
                        f"got shape {tuple(values.shape)}")
    values = values.to(scores.device)
    return values.view(-1, 1, 1, values.shape[-1]) if values.dim() == 2 else values


def trace(model, *, attentions: bool | Sequence[int] = True, tokens: bool = True,
          projected_values: bool | Sequence[int] = False, inputs: bool = False,
          key_scale: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
          edit: Edit | None = None, rules=None) -> Trace:
    """Open the attention tap on ``model`` (a vitx model or any supported nn.Module); see :class:`Trace`."""
    return Trace(model, attentions=attentions, tokens=tokens, projected_values=projected_values, inputs=inputs,
                 key_scale=key_scale, key_mask=key_mask, edit=edit, rules=rules)


__all__ = ["AttentionProduct", "Recorded", "Site", "Trace", "trace"]
