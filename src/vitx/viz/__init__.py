"""Drawing: heatmap overlays and side-by-side grids."""
from .overlay import heatmap, overlay

__all__ = ["heatmap", "overlay"]
