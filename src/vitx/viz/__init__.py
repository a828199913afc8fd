"""Drawing: heatmap overlays, side-by-side grids, and GradCAT's paths through NesT's tree."""
from .grid import grid, tile
from .overlay import heatmap, overlay
from .tree import gradcat_tree

__all__ = ["grid", "gradcat_tree", "heatmap", "overlay", "tile"]
