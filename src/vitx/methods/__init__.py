"""Explanation methods, one module per family; importing this package registers them all."""
from . import attention, flow, gradient, inherent, legrad, nest, perturbation, pruning, relevance, vitcx, vitshapley  # noqa: F401
