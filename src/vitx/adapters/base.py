"""What the tap needs to know about a model family: its blocks, its attention, its token layout.

An adapter is the only place that knows a framework's internals. The tap replaces each attention
module's ``forward`` with :meth:`Adapter.attention_forward`, which computes q, k, v exactly as the
framework does and hands them to the tap's ``attend(q, k, v, scale, dropout, mask)`` (a mask additive or
boolean); everything else about the model runs untouched. On request the tap also maps the values v through the attention's
output projection, with the function :meth:`Adapter.value_projection` gives. For relevance rules
(:mod:`vitx.relevance`) an adapter also names the layer that reads the pixels, the modules that open each
block's residual branches, and the kind of every layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitxError

Attend = Callable[..., torch.Tensor]

# Layer kinds that relevance rules are bound to; anything else is described by its class name.
LAYER_KINDS = {
    nn.Linear: "linear", nn.Conv2d: "linear", nn.LayerNorm: "layernorm", nn.BatchNorm2d: "batchnorm",
    nn.GELU: "activation", nn.ReLU: "activation", nn.Dropout: "pass", nn.Identity: "pass",
    nn.Embedding: "embedding",
}

# Class names of the layers every framework names alike that are the identity (drop-path in eval mode) or a
# per-channel scale (layer scale): timm's, Hugging Face's (BeitDropPath, Dinov2LayerScale...) and vitx's.
PASS_SUFFIXES = ("DropPath", "LayerScale")


@dataclass(frozen=True)
class Description:
    """What an adapter reads off a model, preprocessing included where the framework records it with the
    model (timm's pretrained config, a Hugging Face config's labels and image processor); None or () where
    it does not."""
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    num_prefix_tokens: int
    cls_index: int | None
    num_classes: int
    dynamic_size: bool           # accepts other image sizes (position embeddings are resampled)
    kind: str = "vit"            # flat token sequence with global self-attention; "nest": blocked attention;
                                 # "swin": shifted windows over maps that merge stage by stage; "vqa": a bi-modal
                                 # question answerer; "detr": a detector, class logits and a box per object query;
                                 # "hvt": a flat sequence that 1-D max pooling shortens between stages
    levels: tuple[int, ...] = ()  # nest: the transformer layers of each level, in order; hvt: the blocks of each stage
    pooling: str = "cls"         # what the head reads: "cls" (the class token), "avg", "max", "map"...
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] = ()
    text_length: int = 0         # the most text tokens a bi-modal model takes with its special tokens; 0: no text
    input: str = "pixels"        # "pixels": images (B, 3, H, W); "regions": detector regions (B, R, F), one token each


@dataclass(frozen=True)
class Site:
    """An attention of the model: its name, the streams of its queries and keys (the same for self-attention), and
    its block within the query stream. Co-attention sites of the same block read the same inputs (both directions of
    a cross-modality layer)."""
    name: str
    query: str
    key: str
    block: int

    @property
    def is_self(self) -> bool:
        return self.query == self.key


class Adapter:
    framework = ""
    windowed = False    # attention runs within windows (Swin): per-key score edits do not apply

    def __init__(self, net: nn.Module):
        self.net = net

    def describe(self) -> Description:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def attentions(self) -> list[nn.Module]:
        raise NotImplementedError

    def sites(self) -> list:
        """One :class:`vitx.trace.Site` per module of :meth:`attentions`, in that order; a flat ViT's blocks are
        "image" self-attention sites."""
        return [Site(f"blocks.{i}", "image", "image", i) for i in range(len(self.attentions()))]

    def attention_forward(self, module: nn.Module, attend: Attend) -> Callable:
        """A replacement for ``module.forward`` that routes the attention product through ``attend``."""
        raise NotImplementedError

    def value_projection(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function from the values v (B, heads, N, head_dim) of attention ``module`` to the values after its
        output projection, (B, N, D): v_j W_oᵀ per token j, without the bias (see :func:`project_values`).
        Raises VitxError where the attention output is not Σ_j A_ij v_j W_oᵀ + b_o."""
        raise NotImplementedError

    def block_tokens(self, output):
        """A block's output (or input) -> (its tokens (B, N, D), what the model goes on with): the output itself,
        or one computed from those tokens where they had to be reshaped, so that gradients with respect to the
        recorded tokens reach the logits."""
        return (output[0] if isinstance(output, (tuple, list)) else output), output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) for images x (B, 3, H, W)."""
        return self.net(x)

    def detect(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A detector's (class logits (B, queries, classes + 1), "no object" last; boxes (B, queries, 4) as (cx, cy, w,
        h) fractions of the image)."""
        raise VitxError(f"{type(self.net).__name__} is not a detector")

    def use_tokenizer(self, tokenizer) -> None:
        """Read questions with ``tokenizer`` (Hugging Face region VQA models, :mod:`vitx.adapters.hf.regions`)."""
        raise VitxError(f"{type(self.net).__name__} takes no tokenizer: vitx reads its text, if any, by itself")

    def head_token(self, text) -> torch.Tensor:
        """Per question of a bi-modal model, the column of the text token whose row the head reads: [CLS] (0)."""
        return torch.zeros(len(text), dtype=torch.long, device=text.ids.device)

    def readers(self, text) -> dict[str, tuple[str, torch.Tensor]]:
        """A bi-modal model's: per modality ("image", "text"), the token whose row of relevance explains it, as (its
        stream, its column per question): the head's token (:meth:`head_token`) in the text's stream."""
        stream = self.modalities(text.ids.shape[1])["text"][0]
        head = self.head_token(text)
        return {"image": (stream, head), "text": (stream, head)}

    def text_embedding(self) -> nn.Module | None:
        """A bi-modal model's word-embedding layer (None for an image-only model)."""
        return None

    def pixel_layer(self) -> nn.Module:
        """The layer applied to the images themselves: the patch projection, or a convolutional stem's first
        convolution."""
        raise NotImplementedError

    def residual_branches(self, block: nn.Module) -> tuple[nn.Module, ...]:
        """The modules that open each residual branch of a pre-norm ``block`` (``x + f(norm(x))``), in order:
        their input is the residual stream that the branch's output is added to."""
        raise NotImplementedError

    def layer_kind(self, module: nn.Module) -> str:
        """What relevance rules see in a leaf module: "pixels" (:meth:`pixel_layer`), "linear" (Linear,
        Conv2d), "layernorm", "batchnorm", "activation" (elementwise: GELU, ReLU), "pass" (identity or a
        per-channel scale in eval mode: dropout, drop-path, layer scale), "embedding" (a lookup table read by
        token ids), or else its class name."""
        if module is self.pixel_layer():
            return "pixels"
        if type(module).__name__.endswith(PASS_SUFFIXES):
            return "pass"
        if type(module).__module__ == "transformers.activations":
            return "activation"
        return next((kind for cls, kind in LAYER_KINDS.items() if isinstance(module, cls)), type(module).__name__)


class ListedSites:
    """For an adapter that lists its attentions with their sites in forward order, in :meth:`_named_sites` (tuples
    that start (module, site)): :meth:`attentions` and :meth:`sites` read that list. Put it before Adapter."""

    def _named_sites(self) -> list[tuple]:
        raise NotImplementedError

    def attentions(self) -> list[nn.Module]:
        return [entry[0] for entry in self._named_sites()]

    def sites(self) -> list[Site]:
        return [entry[1] for entry in self._named_sites()]


def project_values(projection: nn.Linear, v: torch.Tensor) -> torch.Tensor:
    """Values v (B, heads, N, head_dim) through the output projection's weight W_o, heads merged:
    (B, N, D) with row j = concat_h(v_jh) W_oᵀ = Σ_h v_jh W_o,hᵀ; the bias is left out."""
    return F.linear(v.transpose(1, 2).flatten(2), projection.weight)


def pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) or not hasattr(value, "__len__") else tuple(map(int, value))
