"""Composites: a rule for every layer kind, bound to a model's layers by hooks that the tap removes on exit.

``vitx.trace(model, rules=CHEFER)`` binds the rules (see :mod:`vitx.relevance.rules` for the convention);
:meth:`Adapter.layer_kind` says what each leaf module is, and a composite that has no rule for a kind
refuses the model before anything runs, naming the layer. An embedding table (a VQA model's word embedding)
reads integer token ids, through which no relevance passes: it keeps its gradient, so that its output e carries
R_e = e ⊙ g_e, each token's relevance, and the propagation ends there.
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Callable

import torch

from ..errors import VitxError
from .rules import AlphaBeta, DetachedStd, Epsilon, Gradient, Identity, RelevanceProduct, Switch, ZBox, divide, is_plain

OnExit = Callable[[Callable[[], None]], None]


class Composite:
    """``layers`` maps each layer kind to its rule; "pixels" always gets z^B over the model's normalised
    pixel range. ``softmax`` is the softmax's rule; ``normalised_adds`` applies Chefer et al.'s rule at the
    residual additions (else they keep the z-rule). ``switch`` selects the backward (:meth:`selectable`)."""

    def __init__(self, name: str, layers: dict, softmax, normalised_adds: bool, switch: Switch | None = None):
        self.name, self.layers, self.normalised_adds, self.switch = name, layers, normalised_adds, switch
        self.product = RelevanceProduct(softmax, switch)

    def selectable(self) -> "Composite":
        """These rules with a switch of their own: a forward under them keeps the rules' backward and, inside
        ``composite.switch.plain()``, the model's plain gradient (backward twice: ``retain_graph=True``)."""
        twin = copy.copy(self)
        twin.switch = Switch()
        twin.product = RelevanceProduct(self.product.softmax_rule, twin.switch)
        return twin

    def rules_for(self, model) -> list[tuple[torch.nn.Module, Callable]]:
        """(module, rule) for every leaf module of ``model``; a VitxError names the first without a rule, or,
        for the normalised rule at residual additions, the first block whose additions the adapter does not know
        (:meth:`Adapter.residual_branches`): all before anything runs."""
        adapter, bound = model.adapter, []
        if self.normalised_adds:
            for block in adapter.blocks():
                adapter.residual_branches(block)
        for name, module in adapter.net.named_modules():
            if next(module.children(), None) is not None:
                continue
            kind = adapter.layer_kind(module)
            if kind == "pixels":
                bound.append((module, ZBox(*pixel_range(model.config))))
            elif kind in self.layers:
                bound.append((module, self.layers[kind]))
            else:
                raise VitxError(f"the {self.name} rules have none for layer {name!r} ({kind})")
        return bound

    def attach(self, model, on_exit: OnExit) -> None:
        """Hook the rules onto ``model``'s layers; every hook's removal goes to ``on_exit``."""
        bound = self.rules_for(model)
        if self.normalised_adds:
            ResidualAdds(model.adapter, self.switch).attach(on_exit)
        for module, rule in bound:
            if not isinstance(rule, Gradient):
                on_exit(module.register_forward_hook(partial(_apply, rule, self.switch)).remove)


def _apply(rule, switch, module, inputs, output):
    if torch.is_grad_enabled():
        return rule(module, inputs[0], output, switch)


def pixel_range(config) -> tuple[torch.Tensor, torch.Tensor]:
    """:attr:`ModelConfig.input_range` as tensors: per channel, the model inputs of pixel values 0 and 1."""
    low, high = config.input_range
    return torch.tensor(low), torch.tensor(high)


class _Addition:
    """One residual addition z = a + b under Chefer et al.'s normalised rule (see :class:`ResidualAdds`).

    It keeps a and z detached: the hooks that hold it live on z's and a's autograd nodes, and a hook holding
    the tensor it hooks is a cycle through C++ that Python's garbage collector cannot see, so every
    forward's activations would stay alive."""

    def __init__(self, skip: torch.Tensor, total: torch.Tensor, switch: Switch | None):
        self.skip, self.total, self.switch = skip.detach(), total.detach(), switch
        self.correction: torch.Tensor | None = None

    def total_backward(self, grad: torch.Tensor) -> torch.Tensor:
        if is_plain(self.switch):
            return grad
        dims = tuple(range(1, grad.dim()))
        total = (self.total * grad).sum(dims, keepdim=True)
        skip = (self.skip.reshape(grad.shape) * grad).sum(dims, keepdim=True)   # a block may reshape its stream
        branch = total - skip
        share = skip.abs() + branch.abs()
        to_skip = divide(divide(skip.abs(), share) * total, skip)
        to_branch = divide(divide(branch.abs(), share) * total, branch)
        self.correction = (to_skip - to_branch) * grad
        return to_branch * grad

    def skip_backward(self, grad: torch.Tensor) -> torch.Tensor:
        correction, self.correction = self.correction, None
        plain = is_plain(self.switch)
        return grad if correction is None or plain else grad + correction.reshape(grad.shape)


class ResidualAdds:
    """Chefer et al.'s normalised rule at each residual addition z = a + b (a the stream entering a branch,
    b the branch): with the z-rule's shares R_a = a ⊙ g_z, R_b = b ⊙ g_z, per image
    R_a ← R_a · |ΣR_a| / (|ΣR_a| + |ΣR_b|) · ΣR_z / ΣR_a, and R_b likewise, so ΣR_a + ΣR_b = ΣR_z.

    The additions are not modules: a is the input of the module that opens the branch
    (:meth:`Adapter.residual_branches`), z the next opener's input or the block's output. A hook on z scales
    the gradient the addition gets, k_b·g_z (so branch and skip both get it); the opener gets a copy a' of
    a whose hook adds the skip's correction (k_a − k_b)·g_z. Every stream tensor's own gradient stays the
    true g_z, so R_z = z ⊙ g_z can be read off it.
    """

    def __init__(self, adapter, switch: Switch | None = None):
        self.adapter, self.switch = adapter, switch
        self.stream: list[tuple[torch.Tensor, torch.Tensor]] = []   # (a, a') per branch of the running block

    def attach(self, on_exit: OnExit) -> None:
        adapter = self.adapter
        on_exit(self.stream.clear)
        for block in adapter.blocks():
            openers = adapter.residual_branches(block)
            on_exit(block.register_forward_pre_hook(lambda *_: self.stream.clear()).remove)
            for opener in openers:
                on_exit(opener.register_forward_pre_hook(self._enter).remove)
            on_exit(block.register_forward_hook(self._block_done).remove)

    def _enter(self, _module, args):
        skip = args[0]
        branch = skip.view_as(skip) if skip.requires_grad else skip
        self.stream.append((skip, branch))
        return (branch, *args[1:])

    def _block_done(self, _module, _inputs, output) -> None:
        output = output[0] if isinstance(output, (tuple, list)) else output
        totals = [skip for skip, _ in self.stream[1:]] + [output]
        for (skip, branch), total in zip(self.stream, totals):
            if not (total.requires_grad and branch.requires_grad):
                continue
            addition = _Addition(skip, total, self.switch)
            total.register_hook(addition.total_backward)
            branch.register_hook(addition.skip_backward)
        self.stream.clear()


CHEFER = Composite(
    "Chefer et al. 2021 LRP",
    layers={"linear": AlphaBeta(1.0, 0.0), "layernorm": Identity(), "batchnorm": Identity(),
            "activation": Identity(), "pass": Gradient(), "embedding": Gradient()},
    softmax=Identity(), normalised_adds=True)

ATTNLRP = Composite(
    "AttnLRP",
    layers={"linear": Epsilon(1e-6), "layernorm": DetachedStd(), "batchnorm": Gradient(),
            "activation": Identity(), "pass": Gradient(), "embedding": Gradient()},
    softmax=Gradient(), normalised_adds=False)
