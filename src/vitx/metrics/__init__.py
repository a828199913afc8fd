"""Metrics: method-agnostic scores of explanations, ``(model, x, targets, maps, masks) -> (B,)`` per image.

Every function returns per-image values (a (B,) float tensor, or a dict of them and of per-image curves)
so that a caller can take means and standard errors. :data:`METRICS` names the leaderboard scores, the
function computing each and whether higher is better; :data:`OBJECT_METRICS` the detector's weak-segmentation
scores of per-object maps (:mod:`vitx.metrics.objects`); :data:`BIMODAL_METRICS` and :data:`IMAGE_TEXT_METRICS` the
scores of (image, question) and (image, prompt) pairs. See docs/metrics.md.
"""
from .bimodal import (BIMODAL_METRICS, IMAGE_STEPS, TEXT_STEPS, compute_bimodal, image_grounding,
                      perturbation_bimodal, text_grounding)
from .image_text import (IMAGE_TEXT_METRICS, compute_image_text, naming_precision, object_grounding,
                         similarity_deletion_insertion)
from .localisation import (class_sensitivity, energy_pointing_game, pointing_game, pointing_game_tolerant,
                           relevance_rank_accuracy)
from .objects import OBJECT_METRICS, compute_objects, match_objects, object_scores, otsu_masks, segmentation_ap
from .perturbation import FRACTIONS, auc, dataset_auc, gaussian_blur, insertion_deletion, perturbation_test
from .registry import METRICS, MetricInfo, compute, metrics
from .sanity import cascade, randomization
from .segmentation import average_precision, segmentation
from .similarity import spearman, ssim
from .sparseness import sparseness

__all__ = ["BIMODAL_METRICS", "FRACTIONS", "IMAGE_STEPS", "IMAGE_TEXT_METRICS", "METRICS", "OBJECT_METRICS",
           "TEXT_STEPS", "MetricInfo", "auc", "average_precision", "cascade", "class_sensitivity", "compute",
           "compute_bimodal", "compute_image_text", "compute_objects", "dataset_auc", "energy_pointing_game",
           "gaussian_blur", "image_grounding", "insertion_deletion", "match_objects", "metrics", "naming_precision",
           "object_grounding", "object_scores", "otsu_masks", "perturbation_bimodal", "perturbation_test",
           "pointing_game", "pointing_game_tolerant", "randomization", "relevance_rank_accuracy", "segmentation",
           "segmentation_ap", "similarity_deletion_insertion", "sparseness", "spearman", "ssim", "text_grounding"]
