"""Drawing: heatmap overlays, side-by-side grids, a question's words coloured by relevance, GradCAT's paths
through NesT's tree, a pruned ViT's kept patches per stage, and X-Pruner's class-by-unit table."""
from .grid import ROWS_PER_PAGE, grid, grid_pages, tile
from .labels import answer_lines, prediction_label, probability
from .overlay import heatmap, overlay
from .stages import pruned_stages
from .tree import gradcat_tree
from .units import unit_heatmap

__all__ = ["ROWS_PER_PAGE", "answer_lines", "grid", "grid_pages", "gradcat_tree", "heatmap", "overlay",
           "prediction_label", "probability", "pruned_stages", "tile", "unit_heatmap"]
