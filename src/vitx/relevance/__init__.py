"""Relevance propagation (LRP and its transformer variants): rule objects bound to layer kinds and applied
through the tap, ``vitx.trace(model, rules=CHEFER)``."""
from .composite import ATTNLRP, CHEFER, Composite, pixel_range
from .rules import AlphaBeta, DetachedStd, Epsilon, Gradient, Identity, RelevanceProduct, ZBox

__all__ = ["ATTNLRP", "CHEFER", "AlphaBeta", "Composite", "DetachedStd", "Epsilon", "Gradient", "Identity",
           "RelevanceProduct", "ZBox", "pixel_range"]
