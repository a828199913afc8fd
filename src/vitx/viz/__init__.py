"""Drawing: heatmap overlays, side-by-side grids, a question's words coloured by relevance, and GradCAT's paths
through NesT's tree."""
from .grid import ROWS_PER_PAGE, grid, grid_pages, tile
from .labels import answer_lines, prediction_label, probability
from .overlay import heatmap, overlay
from .tree import gradcat_tree

__all__ = ["ROWS_PER_PAGE", "answer_lines", "grid", "grid_pages", "gradcat_tree", "heatmap", "overlay",
           "prediction_label", "probability", "tile"]
