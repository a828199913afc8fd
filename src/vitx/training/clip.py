"""The ``shapes-clip`` recipe of ``vitx train``: CLIP's symmetric contrastive loss (Radford et al., ICML 2021) on
:func:`vitx.data.shapes_captions`, the image tower started from ``shapes-vit``; scored by zero-shot classification of
single-object shapes images and by caption retrieval on fresh pairs.

For a batch of B (image, caption) pairs with similarity logits S (B, B) (:class:`vitx.models.clip.CLIP`),
L = ½ [CE(S, diag) + CE(Sᵀ, diag)]: each image picks its own caption among the batch's, and each caption its image.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import CLASS_NAMES, shapes, shapes_captions
from ..data.shapes_captions import MAX_LENGTH, PROMPT_TEMPLATES, TOKENIZER, prompts
from ..models import create_model
from .classifier import start_from
from .device import OnDevice
from .recipes import TEST_IMAGES, Recipe

ZERO_SHOT_TEMPLATE = PROMPT_TEMPLATES[0]     # "a photo of a {shape}"


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """½ [CE(S, diag) + CE(Sᵀ, diag)] of square similarity logits S (B, B), pair i on the diagonal."""
    pairs = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, pairs) + F.cross_entropy(logits.T, pairs)) / 2


def recall_at_1(similarity: torch.Tensor) -> float:
    """Share of the rows of a square similarity matrix whose largest entry is their own (the diagonal)."""
    return (similarity.argmax(1) == torch.arange(len(similarity), device=similarity.device)).float().mean().item()


class ImageText(OnDevice):
    """A CLIP-like model trained with the contrastive loss, its image tower started from ``recipe.start``."""
    draw = staticmethod(shapes_captions)  # a step's data: fresh (image, caption) pairs

    def __init__(self, recipe: Recipe, out_dir: Path):
        super().__init__(create_model(recipe.arch))
        start_from(self.net.visual, out_dir / f"{recipe.start}.safetensors")
        self.meta = {"kind": "clip", "class_names": CLASS_NAMES, "vocabulary": TOKENIZER.tokens,
                     "max_length": MAX_LENGTH, "multi_label": False, "dataset": "shapes_captions 64px"}

    def loss(self, data) -> torch.Tensor:
        device = self.device
        return contrastive_loss(self.net(self.normalized(data.images), data.input_ids.to(device),
                                         data.attention_mask.to(device)))

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """Zero-shot accuracy on TEST_IMAGES fresh single-object shapes images (prompts "a photo of a {shape}"),
        and recall@1 of image-to-caption and caption-to-image retrieval among TEST_IMAGES fresh (image, caption)
        pairs."""
        device, n = self.device, TEST_IMAGES
        ids, mask = TOKENIZER.encode(prompts(ZERO_SHOT_TEMPLATE), MAX_LENGTH, unknown="error")
        classes = self.net.encode_text(ids.to(device), mask.to(device))
        single = shapes(n=n, seed=test_seed)
        images = torch.cat([self.net.encode_image(self.normalized(single.images[i:i + 250])) for i in range(0, n, 250)])
        zero_shot = (images @ classes.T).argmax(1).cpu() == single.labels
        pairs = shapes_captions(n=n, seed=test_seed)
        images = torch.cat([self.net.encode_image(self.normalized(pairs.images[i:i + 250])) for i in range(0, n, 250)])
        texts = self.net.encode_text(pairs.input_ids.to(device), pairs.attention_mask.to(device))
        similarity = images @ texts.T
        return {"accuracy": round(zero_shot.float().mean().item(), 4),
                "image_to_text_r1": round(recall_at_1(similarity), 4),
                "text_to_image_r1": round(recall_at_1(similarity.T), 4)}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return f"# {name}\n\nA pilot of the image-text recipe; its model card comes with the trained model.\n"
