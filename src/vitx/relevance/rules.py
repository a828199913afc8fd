"""Relevance-propagation rules as modified gradients (the "gradient ⊙ input" form of LRP).

Convention: inside the model every tensor t carries the relevance R_t = t ⊙ g_t, where g_t is the gradient
the rules' backward produces. A rule is a callable ``rule(module, x, y, switch=None) -> y'`` run as a forward
hook on a layer: y' has y's value and a backward to x such that x ⊙ g_x is the rule's relevance for x, with
R_y = y ⊙ g_y. y' keeps y's own graph too: while a :class:`Switch` is plain, the backward is the layer's
plain gradient instead, so one forward serves a relevance backward and a gradient backward. Operations
without a rule keep their own gradient, which is the z-rule (LRP-0): exact and conservative for additions,
reshapes, token selection and scaling, while a bias absorbs its share. One exception: the pixel rule (:class:`ZBox`) hands back the pixels' relevance itself as their gradient,
since z^B gives relevance even to a pixel whose value is 0.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..trace import AttentionProduct

STABILISER = 1e-9


class Switch:
    """Which backward the rules bound with it give: their own (default) or, inside :meth:`plain`, every
    layer's plain gradient. One per binding (:meth:`Composite.selectable`), read when the backward runs."""

    def __init__(self):
        self.is_plain = False

    @contextlib.contextmanager
    def plain(self):
        self.is_plain = True
        try:
            yield
        finally:
            self.is_plain = False


def is_plain(switch: Switch | None) -> bool:
    """Whether a binding with ``switch`` (None: a binding that cannot switch) gives plain gradients now."""
    return switch is not None and switch.is_plain


class _Either(torch.autograd.Function):
    """``value`` forward; backward into ``proxy`` (the rule) or, while ``switch`` is plain, into ``value``.
    The branch not taken gets no gradient (None): torch's own nodes then skip their arithmetic, and the
    rules' functions (which do not materialise None as zeros) too."""

    @staticmethod
    def forward(value, proxy, switch):
        return value.detach()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.switch = inputs[2]

    @staticmethod
    def backward(ctx, grad):
        plain = is_plain(ctx.switch)
        return (grad, None, None) if plain else (None, grad, None)


def with_backward(value: torch.Tensor, proxy: torch.Tensor, switch: Switch | None = None) -> torch.Tensor:
    """``value`` forward, the gradient of ``proxy`` backward (of ``value`` while ``switch`` is plain)."""
    return _Either.apply(value, proxy, switch)


def divide(a: torch.Tensor, b: torch.Tensor, eps: float = STABILISER) -> torch.Tensor:
    """a / (b + eps·sign b), and 0 where b is exactly 0. Without a graph to record, in place on two
    temporaries (the rules run it on every layer's output)."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return torch.where(b == 0, torch.zeros_like(a), a / (b + eps * b.sign()))
    return (a / b.sign().mul_(eps).add_(b)).masked_fill_(b == 0, 0)


def ratio(a: torch.Tensor, b: torch.Tensor, eps: float = STABILISER) -> torch.Tensor:
    """:func:`divide` as a constant of the backward: computed without recording a graph."""
    with torch.no_grad():
        return divide(a, b, eps)


class _Split(torch.autograd.Function):
    """``product`` forward; backward the gradient over ``parts`` (the plain gradient while ``switch`` is plain)."""

    @staticmethod
    def forward(product, parts, switch):
        return product.detach()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.parts, ctx.switch = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, grad):
        plain = is_plain(ctx.switch)
        return (grad if plain else grad / ctx.parts), None, None


def split(product: torch.Tensor, parts: int = 2, switch: Switch | None = None) -> torch.Tensor:
    """The uniform rule for a product of ``parts`` operands: each operand gets 1/parts of the relevance."""
    return _Split.apply(product, parts, switch)


def linear_map(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map (Linear or Conv2d) with another weight and no bias."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, None)
    return F.linear(x, weight)


class _Rescaled(torch.autograd.Function):
    """``y`` forward; backward g ⊙ y / x into x. Keeps x and y themselves (the layers around keep them for
    their own backward anyway) instead of a third tensor y / x."""

    @staticmethod
    def forward(x, y):
        return y.detach()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:        # the plain backward: nothing to pass on
            return None, None
        x, y = ctx.saved_tensors
        return grad * divide(y, x), None


class _Magnitude(torch.autograd.Function):
    """|W| |x| for the layer (Linear or Conv2d). Its backward, sign(x) ⊙ |W|ᵀ g, recomputes |W| rather than
    keep a copy of every weight alive until the backward runs."""

    @staticmethod
    def forward(module, x):
        return linear_map(module, x.abs(), module.weight.detach().abs())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.module = inputs[0]
        ctx.save_for_backward(inputs[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:        # the plain backward: nothing to pass on
            return None, None
        x, = ctx.saved_tensors
        module, weight = ctx.module, ctx.module.weight.detach().abs()
        if isinstance(module, nn.Conv2d):
            through = torch.nn.grad.conv2d_input(x.shape, weight, grad, module.stride, module.padding,
                                                 module.dilation, module.groups)
        else:
            through = grad @ weight
        return None, through * x.sign()


def unbiased(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The layer's output ``y`` without its bias: W x."""
    if module.bias is None:
        return y
    bias = module.bias.detach()
    return y - (bias.view(-1, *(1,) * (y.dim() - 2)) if isinstance(module, nn.Conv2d) else bias)


class Gradient:
    """The layer's own gradient: the z-rule, R_x = x ⊙ ∂y/∂x · R_y / y (a bias absorbs its share)."""

    def __call__(self, module, x: torch.Tensor, y: torch.Tensor, switch: Switch | None = None) -> torch.Tensor:
        return y


class Identity:
    """Identity rule for an elementwise layer: R_x = R_y, so g_x = g_y ⊙ y / x."""

    def __call__(self, module, x: torch.Tensor, y: torch.Tensor, switch: Switch | None = None) -> torch.Tensor:
        return with_backward(y, _Rescaled.apply(x, y.detach()), switch)


class Epsilon:
    """LRP-ε for a linear layer: R_x = x ⊙ Wᵀ (R_y / (y + ε·sign y)), y including the bias."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def __call__(self, module, x: torch.Tensor, y: torch.Tensor, switch: Switch | None = None) -> torch.Tensor:
        return with_backward(y, y * ratio(y, y, self.epsilon), switch)


class AlphaBeta:
    """LRP-αβ for a linear layer (α − β = 1): R_x = α x ⊙ ∂z⁺/∂x · R_y / z⁺ − β x ⊙ ∂z⁻/∂x · R_y / z⁻, where
    z⁺ = W⁺x⁺ + W⁻x⁻ sums the positive contributions x_i w_ji and z⁻ = W⁻x⁺ + W⁺x⁻ the negative ones
    (no bias). α = 1, β = 0 gives relevance only along positive contributions.

    Computed as 2 z± = W x ± |W| |x| from the layer's own W x: one extra product forward, not two."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.0):
        if alpha - beta != 1:
            raise ValueError(f"alpha - beta must be 1, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta

    def __call__(self, module, x: torch.Tensor, y: torch.Tensor, switch: Switch | None = None) -> torch.Tensor:
        signed, magnitude = unbiased(module, y), _Magnitude.apply(module, x)
        excite = signed + magnitude                          # 2 z⁺ (the factor 2 cancels in excite ⊙ y / excite)
        proxy = excite * (ratio(y, excite) if self.alpha == 1 else ratio(y, excite).mul_(self.alpha))
        if self.beta:
            inhibit = signed - magnitude                     # 2 z⁻
            proxy = proxy - inhibit * ratio(y, inhibit).mul_(self.beta)
        return with_backward(y, proxy, switch)


class ZBox:
    """z^B for the layer that reads pixels bounded by l ≤ x ≤ h (per channel):
    R_x = x ⊙ Wᵀ S − l ⊙ W⁺ᵀ S − h ⊙ W⁻ᵀ S, S = R_y / (W x − W⁺ l − W⁻ h) (no bias).
    Its gradient to the pixels is R_x itself."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        self.low, self.high = low, high

    def __call__(self, module, x: torch.Tensor, y: torch.Tensor, switch: Switch | None = None) -> torch.Tensor:
        weight = module.weight.detach()
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        low = self.low.to(x).view(shape).expand_as(x)
        high = self.high.to(x).view(shape).expand_as(x)
        value = x.detach()
        bounded = linear_map(module, value, weight) - linear_map(module, low, wp) - linear_map(module, high, wn)
        # d/dx of f(x ⊙ c) is c ⊙ fᵀ: each term's gradient is its own relevance factor
        proxy = (linear_map(module, x * value, weight) - linear_map(module, x * low, wp)
                 - linear_map(module, x * high, wn))
        return with_backward(y, proxy * ratio(y, bounded), switch)


class DetachedStd:
    """AttnLRP's LayerNorm rule: the identity rule on the division by σ (σ held constant), the z-rule on the
    centring and the affine map: g_x = ∂/∂x [w ⊙ (x − mean x) / σ] · g_y."""

    def __call__(self, module: nn.LayerNorm, x: torch.Tensor, y: torch.Tensor,
                 switch: Switch | None = None) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.detach().square().mean(-1, keepdim=True) + module.eps).sqrt()
        proxy = centred / std
        return with_backward(y, proxy if module.weight is None else proxy * module.weight, switch)


class RelevanceProduct(AttentionProduct):
    """The attention product under relevance rules: the uniform rule on q kᵀ and on A v (each operand gets
    half the relevance) and ``softmax`` (a rule) at the softmax, all selected by ``switch``."""

    def __init__(self, softmax, switch: Switch | None = None):
        self.softmax_rule, self.switch = softmax, switch

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return split(super().scores(q, k), switch=self.switch)

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return self.softmax_rule(None, scores, super().softmax(scores), self.switch)

    def mix(self, attention: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return split(super().mix(attention, v), switch=self.switch)
