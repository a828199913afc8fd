"""Explanation methods, one module per family; importing this package registers them all."""
from . import attention, gradient  # noqa: F401
