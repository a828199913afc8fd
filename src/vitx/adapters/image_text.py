"""What the tap and the methods need of a two-tower image-text model (CLIP and kin, Radford et al., ICML 2021).

An image tower and a text tower, each a stack of self-attention blocks ("image" and "text" sites), meet only in the
similarity of their pooled, projected embeddings: s(x, t) = exp(τ) · cos(f(x), g(t)) (+ b, SigLIP's bias). vitx
explains the similarity of (image, prompt) pairs: :meth:`ImageTextAdapter.forward` takes row r of the images with
row r of the prompts and gives s for each row as a one-column logit, so that every method sees a pair as a
classifier sees an image with one class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text import Text


class ImageTextAdapter:
    """Mixin for a two-tower model's adapter (put it first among the bases). A subclass gives :meth:`image_features`,
    :meth:`text_features`, :meth:`project_tokens`, :meth:`similarity_scale`, :meth:`encode_text`, where the text's
    pooled token is not [CLS] :meth:`head_token`, and ``forward(x, text)``: s(x_r, t_r) per row as (B, 1) logits,
    through the network's own call (where the tap's pre-hook makes a frozen model's input differentiable)."""

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The image tower's projected embeddings (B, D), before normalising."""
        raise NotImplementedError

    def text_features(self, text: Text) -> torch.Tensor:
        """The text tower's projected embeddings (T, D), before normalising."""
        raise NotImplementedError

    def project_tokens(self, pooled: torch.Tensor) -> torch.Tensor:
        """The image tower's final norm and projection applied to pooled tokens (B, width) -> (B, D) (LeGrad reads
        every block's tokens through them)."""
        raise NotImplementedError

    def similarity_scale(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(exp(τ), b): the scale of the cosine similarity and its bias (None where the model has none)."""
        raise NotImplementedError

    def scaled(self, cosine: torch.Tensor) -> torch.Tensor:
        """exp(τ) · cosine (+ b): similarities from cosines."""
        scale, bias = self.similarity_scale()
        return scale * cosine + (0 if bias is None else bias)

    def pair_scores(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """s per row of embeddings (B, D) of images and texts, as a one-column logit (B, 1)."""
        return self.scaled((F.normalize(images, dim=-1) * F.normalize(texts, dim=-1)).sum(-1))[:, None]

    def similarities(self, x: torch.Tensor, text: Text) -> torch.Tensor:
        """s of every image with every prompt, (B, T): each image and each prompt encoded once."""
        return self.scaled(F.normalize(self.image_features(x), dim=-1) @ F.normalize(self.text_features(text), dim=-1).T)

    def image_depth(self) -> int:
        """The image tower's blocks (its sites come first)."""
        return sum(site.query == "image" for site in self.sites())

    def modalities(self, text_length: int) -> dict[str, tuple[str, slice]]:
        """Where each modality's tokens sit: the image's patches after the image tower's prefix tokens, the text's
        every column."""
        return {"text": ("text", slice(0, None)), "image": ("image", slice(self.describe().num_prefix_tokens, None))}

    def readers(self, text: Text) -> dict[str, tuple[str, torch.Tensor]]:
        """Per modality, the token whose row of relevance explains it (stream, column per prompt): the image tower's
        class token, the text's pooled token (:meth:`head_token`)."""
        cls = self.describe().cls_index
        head = self.head_token(text)
        return {"image": ("image", torch.full_like(head, cls)), "text": ("text", head)}
