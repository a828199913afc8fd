"""What Hugging Face's region-feature VQA models share (VisualBERT, LXMERT): a question encoded by a BERT tokenizer,
and an image given as detector regions, one token per region.

The model input x is (B, R, F): each region's feature vector (VisualBERT: ``visual_embedding_dim`` values), and for
LXMERT its box after it (``visual_feat_dim`` + ``visual_pos_dim`` values: features, then x1, y1, x2, y2 normalised
to [0, 1]); :meth:`vitx.model.Model.regions` builds it. The regions lie on a token grid (1, R) with no prefix and no
class token, so every map of the image is per region. Their attention modules are BERT's (``query``, ``key``,
``value`` and a dropout on the probabilities, scores divided by √head_dim, an additive mask).
"""
from __future__ import annotations

import math
import warnings
from functools import partial

import torch
from torch import nn

from ...errors import VitxError
from ...layout import TokenLayout
from ...text import Text
from ..base import Adapter, Attend, Description, ListedSites, Site, project_values


class HFRegionAdapter(ListedSites, Adapter):
    framework = "hf"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        self._tokenizer = None

    # what a family says
    def feature_size(self) -> int:
        raise NotImplementedError

    def box_size(self) -> int:
        """Values of each region's box in the input, after its features (LXMERT: 4); 0: the model reads no boxes."""
        return 0

    def _named_sites(self) -> list[tuple[nn.Module, Site, nn.Linear]]:
        """(attention module, its site, its output projection) in forward order."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor, text: Text) -> torch.Tensor:
        raise NotImplementedError

    # shared
    def describe(self) -> Description:
        classes = self.num_classes()
        names = tuple(self.net.config.id2label[i] for i in range(classes)) \
            if len(self.net.config.id2label) == classes else ()
        return Description((1, 1), (1, 1), 0, None, classes, dynamic_size=True, kind="vqa", class_names=names,
                           text_length=int(self.net.config.max_position_embeddings), input="regions")

    def num_classes(self) -> int:
        return int(self.net.config.num_labels)

    def text_embedding(self) -> nn.Embedding:
        """The word embedding (ids -> vectors, before the position and token type embeddings): where gradient
        methods read and scale the text input."""
        return self.net.base_model.embeddings.word_embeddings

    def width(self) -> int:
        """Values per region in the model input: its features, and its box where the model reads one."""
        return self.feature_size() + self.box_size()

    def blocks(self) -> list[nn.Module]:
        return []

    def value_projection(self, module):
        return partial(project_values, next(out for m, _, out in self._named_sites() if m is module))

    def use_tokenizer(self, tokenizer) -> None:
        if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise VitxError(f"tokenizer must be a Hugging Face tokenizer (a BertTokenizer(Fast) for "
                            f"{type(self.net).__name__}), got {type(tokenizer).__name__}")
        self._tokenizer = tokenizer

    def encode_text(self, questions: list[str], unknown: str = "warn") -> Text:
        """Questions through the tokenizer: [CLS] word pieces [SEP], padded on the right to the longest question;
        words the tokenizer makes [UNK] of are named in a warning (``unknown="error"``: refused)."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise VitxError(f"{type(self.net).__name__} needs the tokenizer of its questions: wrap(net, "
                            "tokenizer=...) or load_model('hf:DIR') with the tokenizer's files saved in DIR")
        if unknown not in ("warn", "error"):
            raise VitxError(f"unknown must be 'warn' or 'error', got {unknown!r}")
        if not questions:
            raise VitxError("questions must be a non-empty list of strings")
        for i, question in enumerate(questions):
            if not question.strip():
                raise VitxError(f"question {i} is empty: {question!r}")
        encoded = tokenizer(questions, padding=True, padding_side="right", return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"].bool()
        limit = self.describe().text_length
        for i, length in enumerate(mask.sum(1).tolist()):
            if length > limit:
                raise VitxError(f"question {i} has {length} tokens with [CLS] and [SEP], more than the model's "
                                f"{limit}: {questions[i]!r}")
        missing = sorted({word for q in questions for word in q.split()
                          if tokenizer.unk_token in tokenizer.tokenize(word)})
        if missing:
            if unknown == "error":
                raise VitxError(f"words outside the vocabulary: {missing}")
            warnings.warn(f"words outside the vocabulary, encoded as {tokenizer.unk_token}: {missing}", stacklevel=3)
        tokens = tuple(tuple(tokenizer.convert_ids_to_tokens(row[kept].tolist())) for row, kept in zip(ids, mask))
        return Text(ids, mask, tokens)

    def regions(self, features, boxes=None) -> torch.Tensor:
        """The model input (B, R, width) from features (B, R, F) and, for a model that reads boxes, boxes (B, R, 4)."""
        name = type(self.net).__name__
        self._check("features", features, self.feature_size())
        if not self.box_size():
            if boxes is not None:
                raise VitxError(f"{name} reads region features only: pass no boxes")
            return features
        if boxes is None:
            raise VitxError(f"{name} reads each region's box too: pass boxes (B, R, {self.box_size()}), x1, y1, x2, y2 "
                            "in [0, 1]")
        self._check("boxes", boxes, self.box_size())
        if boxes.shape[:2] != features.shape[:2]:
            raise VitxError(f"boxes {tuple(boxes.shape)} do not match features {tuple(features.shape)}: give one box "
                            "per region")
        return torch.cat([features, boxes.to(features)], -1)

    def region_layout(self, x) -> TokenLayout:
        """The token layout of input x (B, R, width): a grid (1, R), no prefix, no class token."""
        self._check("its input", x, self.width(), ": build it with model.regions(features, boxes)")
        return TokenLayout(0, (1, 1), (1, x.shape[1]), None)

    def _check(self, what: str, value, width: int, hint: str = "") -> None:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.shape[-1] != width or not value.shape[1]:
            raise VitxError(f"{type(self.net).__name__} takes {what} as a (B, R, {width}) tensor of R >= 1 regions, "
                            f"got {shape}{hint}")
        if not value.is_floating_point():
            raise VitxError(f"{what} must be floating point, got {value.dtype}")
        if not torch.isfinite(value).all():
            raise VitxError(f"{what} has NaN or infinite values")

    def forward(self, x: torch.Tensor, text: Text | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Answer logits for regions x (B, R, width) and ``text``; ``keep`` (B, k): the regions kept, the others
        deleted."""
        if keep is not None:
            x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        return self.logits(x, text)


def bert_heads(module: nn.Module, attend: Attend, queries: torch.Tensor, keys: torch.Tensor, mask) -> torch.Tensor:
    """BERT's attention product of ``module`` through ``attend``: (B, Nq, heads · head_dim), heads merged."""
    size = module.attention_head_size

    def split(tokens, projection):
        return projection(tokens).view(*tokens.shape[:-1], -1, size).transpose(1, 2)
    dropout = module.dropout.p if module.training else 0.0
    out = attend(split(queries, module.query), split(keys, module.key), split(keys, module.value),
                 1 / math.sqrt(size), dropout, mask)
    return out.transpose(1, 2).flatten(2)
