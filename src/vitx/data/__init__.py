"""Procedural datasets with pixel-exact ground truth for scoring explanations."""
from .shapes import ShapesData, shapes, CLASS_NAMES

__all__ = ["ShapesData", "shapes", "CLASS_NAMES"]
