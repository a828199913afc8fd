"""The recipes of ``vitx train``, one module per family: :mod:`.recipes` (the table of recipes and their seeds),
:mod:`.run` (the training loop), :mod:`.classifier`, :mod:`.shapley` (ViT Shapley's surrogate and explainer),
:mod:`.gan` (generators and their Fréchet distance), :mod:`.vqa`, :mod:`.detr`; :mod:`.draws` draws the step batches.
The loop imports a family's module only when one of its recipes runs."""
from .recipes import RECIPES, Recipe
from .run import train

__all__ = ["RECIPES", "Recipe", "train"]
