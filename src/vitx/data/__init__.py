"""Procedural datasets with pixel-exact ground truth for scoring explanations."""
from .shapes import ShapesData, shapes, CLASS_NAMES
from .shapes_captions import ShapesCaptionData, shapes_captions
from .shapes_vqa import ANSWERS, COLOURS, QUESTION_TYPES, TOKENIZER, ShapesVQAData, shapes_vqa
from .vocabulary import WordTokenizer

__all__ = ["ShapesData", "shapes", "CLASS_NAMES", "ShapesCaptionData", "shapes_captions", "ShapesVQAData", "shapes_vqa", "ANSWERS", "COLOURS",
           "QUESTION_TYPES", "TOKENIZER", "WordTokenizer"]
