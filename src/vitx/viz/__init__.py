"""Drawing: heatmap overlays and side-by-side grids."""
from .grid import grid
from .overlay import heatmap, overlay

__all__ = ["grid", "heatmap", "overlay"]
