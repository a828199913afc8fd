"""Explanation methods, one module per family; importing this package registers them all."""
from . import attention, flow, gradient, perturbation, relevance, vitcx  # noqa: F401
