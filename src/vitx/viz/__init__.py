"""Drawing: heatmap overlays, side-by-side grids, and GradCAT's paths through NesT's tree."""
from .grid import ROWS_PER_PAGE, grid, grid_pages, tile
from .labels import prediction_label, probability
from .overlay import heatmap, overlay
from .tree import gradcat_tree

__all__ = ["ROWS_PER_PAGE", "grid", "grid_pages", "gradcat_tree", "heatmap", "overlay", "prediction_label",
           "probability", "tile"]
