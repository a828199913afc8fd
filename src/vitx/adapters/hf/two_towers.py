"""Hugging Face ``CLIPModel`` and ``SiglipModel``: an image tower and a text tower scored by the similarity of their
projected embeddings (:mod:`vitx.adapters.image_text`), prompts read by the model's tokenizer.

Sites: the vision encoder's layers ("image" self-attention), then the text encoder's ("text"). Each attention runs
transformers' q/k/v projections through the tap (:func:`.common.qkv_forward`) with the mask transformers builds:
padding (the tokenizer's ``attention_mask``, given to the model as the processor gives it) and, in CLIP's text tower,
the causal mask, both applied to the scores before the softmax as transformers does.

The pooled text token (:meth:`HFCLIPModelAdapter.head_token`) is the one transformers reads: CLIP's end-of-text token
(its first occurrence of the config's ``eos_token_id``, or the largest id where the config keeps the legacy id 2),
SigLIP's last column (prompts are padded to the context, ``padding="max_length"``, as SigLIP was trained). SigLIP's
image tower has no class token: its head pools all tokens by an attention of its own, which is not one of the tap's
sites, so no row of the image tower's relevance is the one its head reads: the methods that read that row
(``generic-attention``, ``legrad``) refuse it before any work (its pooling is "map"), and the image methods that need
no such row (gradcam, saliency, integrated-gradients, occlusion, rise) apply.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import VitxError
from ...text import Text
from ..base import Attend, Description, ListedSites, Site, pair
from ..image_text import ImageTextAdapter
from .clip import HFClipAdapter
from .common import qkv_forward
from .preprocessing import processor_facts


class HFCLIPModelAdapter(ImageTextAdapter, ListedSites, HFClipAdapter):
    towers = {}
    causal_text = True          # the text tower's attention is causal (CLIP); SigLIP's is not
    padding = "longest"         # how the tokenizer pads a batch of prompts

    def __init__(self, net: nn.Module):
        super().__init__(net)
        self._tokenizer = None
        self._feeds_mask = True     # the tokenizer gives the model an attention mask (its model_input_names)

    def _named_sites(self) -> list[tuple[nn.Module, Site]]:
        vision, text = self.net.vision_model.encoder.layers, self.net.text_model.encoder.layers
        found = [(layer.self_attn, Site(f"vision_model.encoder.layers.{i}", "image", "image", i))
                 for i, layer in enumerate(vision)]
        return found + [(layer.self_attn, Site(f"text_model.encoder.layers.{i}", "text", "text", i))
                        for i, layer in enumerate(text)]

    def blocks(self) -> list[nn.Module]:
        """The vision encoder's layers, then the text encoder's."""
        return [*self.net.vision_model.encoder.layers, *self.net.text_model.encoder.layers]

    def describe(self) -> Description:
        size, facts = processor_facts(self.net.config, 0)
        prefix, cls_index = self.prefix()
        return Description(size or pair(self.vision.image_size), pair(self.vision.patch_size), prefix, cls_index, 0,
                           dynamic_size=True, kind="clip", pooling=self.pooling(), text_length=self.context(),
                           **facts)

    def context(self) -> int:
        return int(self.net.config.text_config.max_position_embeddings)

    def pooling(self) -> str:
        return "cls"

    def attention_forward(self, module, attend: Attend):
        text = any(module is layer.self_attn for layer in self.net.text_model.encoder.layers)
        return qkv_forward(module, causal(attend) if text and self.causal_text else attend, module.out_proj)

    def text_embedding(self) -> nn.Module:
        return self.net.text_model.embeddings.token_embedding

    # the text
    def use_tokenizer(self, tokenizer) -> None:
        if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise VitxError(f"tokenizer must be a Hugging Face tokenizer (the one saved with the "
                            f"{type(self.net).__name__}), got {type(tokenizer).__name__}")
        self._tokenizer = tokenizer
        self._feeds_mask = "attention_mask" in getattr(tokenizer, "model_input_names", ("attention_mask",))

    def encode_text(self, prompts: list[str], unknown: str = "warn") -> Text:
        """Prompts through the tokenizer, special tokens included, padded on the right (``padding``); the model gets
        the tokenizer's attention mask where the tokenizer gives one. Each token is spelled as the tokenizer decodes
        it alone (CLIP's "red</w>" as "red"). ``unknown`` is accepted for the common signature: a BPE tokenizer spells
        any word."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise VitxError(f"{type(self.net).__name__} needs the tokenizer of its prompts: wrap(net, tokenizer=...) "
                            "or load_model('hf:DIR') with the tokenizer's files saved in DIR")
        lengths = checked_lengths(prompts, lambda prompt: len(tokenizer(prompt)["input_ids"]), self.context())
        ids = tokenizer(prompts, padding=self.padding, max_length=self.context(), padding_side="right",
                        return_tensors="pt")["input_ids"]
        mask = torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]
        tokens = tuple(tuple(tokenizer.decode([i]).strip() for i in row[kept].tolist()) for row, kept in zip(ids, mask))
        return Text(ids, mask, tokens)

    def _text_inputs(self, text: Text) -> dict:
        return {"input_ids": text.ids, "attention_mask": text.mask.long() if self._feeds_mask else None}

    def head_token(self, text: Text) -> torch.Tensor:
        """CLIP's end-of-text column, as transformers finds it (:mod:`this module <.two_towers>`)."""
        eos = self.net.config.text_config.eos_token_id
        ids = text.ids.to(torch.int)
        return ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)

    # the similarity
    def _resize(self, x: torch.Tensor) -> dict:
        return {"interpolate_pos_encoding": tuple(x.shape[-2:]) != pair(self.vision.image_size)}

    def image_features(self, x):
        return self.net.get_image_features(pixel_values=x, **self._resize(x)).pooler_output

    def text_features(self, text: Text):
        return self.net.get_text_features(**self._text_inputs(text)).pooler_output

    def project_tokens(self, pooled):
        return self.net.visual_projection(self.model.post_layernorm(pooled))

    def similarity_scale(self):
        return self.net.logit_scale.exp(), getattr(self.net, "logit_bias", None)

    def forward(self, x: torch.Tensor, text: Text) -> torch.Tensor:
        """s(x_r, t_r) per row, (B, 1), read off the model's own ``logits_per_image`` (B, B): its diagonal."""
        inputs = self._text_inputs(text)
        # positional, so that the tap's pre-hook sees the pixels
        logits = self.net(inputs["input_ids"], x, inputs["attention_mask"], **self._resize(x)).logits_per_image
        return logits.diagonal()[:, None]


class HFSiglipModelAdapter(HFCLIPModelAdapter):
    causal_text = False
    padding = "max_length"

    def prefix(self):
        return 0, None

    def pooling(self) -> str:
        return "map"

    def head_token(self, text: Text) -> torch.Tensor:
        """SigLIP reads the last column (padding, when the prompt is shorter than the context)."""
        return torch.full((len(text),), text.ids.shape[1] - 1, dtype=torch.long, device=text.ids.device)


def causal(attend: Attend) -> Attend:
    """``attend`` with the causal mask (query i sees keys j <= i) joined to the mask it is given: transformers leaves
    that mask out where its attention implementation applies it by itself (``is_causal``)."""
    def causal_attend(q, k, v, scale, dropout=0.0, mask=None):
        seen = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if mask is None:
            mask = seen
        elif mask.dtype == torch.bool:
            mask = mask & seen
        else:
            mask = mask.masked_fill(~seen, float("-inf"))
        return attend(q, k, v, scale, dropout, mask)
    return causal_attend


def checked_lengths(prompts: list[str], count, context: int) -> list[int]:
    """Each prompt's count of tokens, special tokens included (``count(prompt)``); a VitxError for no prompt, an empty
    one, or one of more tokens than the text tower's ``context``."""
    if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
        raise VitxError(f"prompts must be a non-empty list of strings, got {prompts!r:.80}")
    lengths = []
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise VitxError(f"prompt {i} is empty: {prompt!r}")
        lengths.append(count(prompt))
        if lengths[-1] > context:
            raise VitxError(f"prompt {i} has {lengths[-1]} tokens, more than the text tower's context of {context}: "
                            f"{prompt!r}")
    return lengths


IMAGE_TEXT = {"CLIPModel": HFCLIPModelAdapter, "SiglipModel": HFSiglipModelAdapter}
