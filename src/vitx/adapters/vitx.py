"""Adapters for vitx's own architectures (:mod:`vitx.models`): its ViT, its VQA transformers and its detector."""
from __future__ import annotations

from functools import partial

from torch import nn

from ..data.vocabulary import SPECIAL_TOKENS, WordTokenizer
from ..models.detr import DecoderLayer
from ..models.vit import VisionTransformer
from ..models.vqa import Attention, CoAttention
from ..text import Text
from .image_text import ImageTextAdapter
from .base import Adapter, Attend, Description, ListedSites, Site, pair, project_values


class VitxAdapter(Adapter):
    """What vitx's architectures share: attention modules with an output projection ``proj``, and the ViT patch
    embedding (:class:`vitx.models.vit.PatchEmbed`)."""
    framework = "vitx"

    def value_projection(self, module):
        return partial(project_values, module.proj)

    def pixel_layer(self) -> nn.Module:
        return patch_pixel_layer(self.net.patch_embed)


def patch_pixel_layer(patch_embed: nn.Module) -> nn.Module:
    """The first layer of a :class:`vitx.models.vit.PatchEmbed` to read the pixels: its stem's first convolution, or
    its patch projection."""
    stem = patch_embed.stem
    return stem[0] if isinstance(stem, nn.Sequential) else patch_embed.proj


class VitxViTAdapter(VitxAdapter):

    def describe(self) -> Description:
        net: VisionTransformer = self.net
        cfg = net.cfg
        return Description(pair(cfg.image_size), pair(cfg.patch_size), cfg.num_prefix_tokens,
                           0 if cfg.class_token else None, cfg.num_classes, dynamic_size=True,
                           pooling="cls" if cfg.global_pool == "token" else cfg.global_pool)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def attentions(self) -> list[nn.Module]:
        return [block.attn for block in self.net.blocks]

    def attention_forward(self, module, attend: Attend):
        return vit_attention_forward(module, attend)


    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        return block.norm1, block.norm2



class WordText:
    """The text side of vitx's bi-modal architectures: a closed vocabulary of words (``cfg.vocabulary``, the special
    tokens first) read by :class:`vitx.data.vocabulary.WordTokenizer`, [CLS] first."""

    def tokenizer(self) -> WordTokenizer:
        vocabulary = tuple(self.net.cfg.vocabulary)
        return WordTokenizer(vocabulary[len(SPECIAL_TOKENS):])

    def encode_text(self, questions: list[str], unknown: str = "warn") -> Text:
        tokenizer = self.tokenizer()
        noun = "prompt" if self.describe().kind == "clip" else "question"
        ids, mask = tokenizer.encode(questions, self.net.cfg.max_length, unknown=unknown, noun=noun)
        tokens = tuple(tuple(tokenizer.tokens[i] for i in row[row != 0].tolist()) for row in ids)
        return Text(ids, mask, tokens)

    def text_embedding(self) -> nn.Embedding:
        """The word embedding layer (ids -> vectors, before the position embedding): where gradient methods read
        and scale the text input."""
        return self.net.word_embed


class VitxVQAAdapter(WordText, ListedSites, VitxAdapter):
    """vitx's VQA transformers (:mod:`vitx.models.vqa`): image and question in, answer logits out. One stream: its
    blocks are "joint" self-attention sites over [words; patches]. Two streams: "text" and "image" self-attention
    blocks, then per cross-modality layer the co-attention sites text→image and image→text and a self-attention
    site per stream."""

    def describe(self) -> Description:
        cfg = self.net.cfg
        return Description(pair(cfg.image_size), pair(cfg.patch_size), 0, None, len(cfg.answers),
                           dynamic_size=False, kind="vqa", class_names=tuple(cfg.answers), text_length=cfg.max_length)

    def _named_sites(self) -> list[tuple[nn.Module, Site]]:
        net, cfg = self.net, self.net.cfg
        if cfg.streams == "single":
            return [(b.attn, Site(f"blocks.{i}", "joint", "joint", i)) for i, b in enumerate(net.blocks)]
        found = [(b.attn, Site(f"text_blocks.{i}", "text", "text", i)) for i, b in enumerate(net.text_blocks)]
        found += [(b.attn, Site(f"image_blocks.{i}", "image", "image", i)) for i, b in enumerate(net.image_blocks)]
        for i, layer in enumerate(net.cross_layers):
            name = f"cross_layers.{i}"
            found += [(layer.text_cross.attn, Site(f"{name}.text_cross", "text", "image", i)),
                      (layer.image_cross.attn, Site(f"{name}.image_cross", "image", "text", i)),
                      (layer.text_self.attn, Site(f"{name}.text_self", "text", "text", cfg.text_layers + i)),
                      (layer.image_self.attn, Site(f"{name}.image_self", "image", "image", cfg.image_layers + i))]
        return found

    def blocks(self) -> list[nn.Module]:
        """The residual blocks in forward order: one stream's blocks; two streams' language and image blocks, then
        per cross-modality layer its two co-attentions (text, image) and its two self-attention blocks."""
        net = self.net
        if net.cfg.streams == "single":
            return list(net.blocks)
        found = [*net.text_blocks, *net.image_blocks]
        for layer in net.cross_layers:
            found += [layer.text_cross, layer.image_cross, layer.text_self, layer.image_self]
        return found

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        """A block's norm1 and norm2; a co-attention's ``norm`` alone: the other stream enters through
        ``norm_context`` as keys and values, not as a residual."""
        return (block.norm,) if isinstance(block, CoAttention) else (block.norm1, block.norm2)

    def attention_forward(self, module, attend: Attend):
        return context_attention_forward(module, attend)

    def forward(self, x, text: Text | None = None, keep=None):
        return self.net(x, text.ids, text.mask, keep)

    def modalities(self, text_length: int) -> dict[str, tuple[str, slice]]:
        """Where each modality's tokens sit: {"text" | "image": (stream, columns of that stream)}; the head reads
        row 0 of the text's stream (the [CLS] token)."""
        if self.net.cfg.streams == "single":
            return {"text": ("joint", slice(0, text_length)), "image": ("joint", slice(text_length, None))}
        return {"text": ("text", slice(0, None)), "image": ("image", slice(0, None))}


def vit_attention_forward(module, attend: Attend):
    """The forward of a :class:`vitx.models.vit.Attention` with its product routed through ``attend``."""
    def forward(x):
        q, k, v = module.split_heads(x)
        return module.merge_heads(attend(q, k, v, module.scale))
    return forward


def context_attention_forward(module, attend: Attend):
    """The forward of a :class:`vitx.models.vqa.Attention` (self- or cross-attention, keys masked by
    ``key_padding``) with its product routed through ``attend``."""
    def forward(x, context=None, key_padding=None):
        mask = None if key_padding is None else key_padding[:, None, None, :]
        return module.merge_heads(attend(*module.split_heads(x, context), module.scale, mask=mask))
    return forward


class VitxDETRAdapter(ListedSites, VitxAdapter):
    """vitx's DETR-like detector (:mod:`vitx.models.detr`): images in, per object query class logits (the last
    class "no object") and boxes out. Its encoder blocks are "image" self-attention sites; per decoder layer, the
    queries' self-attention ("queries" over "queries") and their cross-attention over the image ("queries" over
    "image"), in that order."""

    def describe(self) -> Description:
        cfg = self.net.cfg
        return Description(pair(cfg.image_size), pair(cfg.patch_size), 0, None, len(cfg.classes), dynamic_size=False,
                           kind="detr", class_names=tuple(cfg.classes))

    def _named_sites(self) -> list[tuple[nn.Module, Site]]:
        found = [(b.attn, Site(f"blocks.{i}", "image", "image", i)) for i, b in enumerate(self.net.blocks)]
        for i, layer in enumerate(self.net.decoder):
            found += [(layer.self_attn, Site(f"decoder.{i}.self_attn", "queries", "queries", i)),
                      (layer.cross_attn, Site(f"decoder.{i}.cross_attn", "queries", "image", i))]
        return found

    def blocks(self) -> list[nn.Module]:
        """The encoder blocks, then the decoder layers."""
        return [*self.net.blocks, *self.net.decoder]

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        """A decoder layer's norm1, norm2 and norm3 (the image enters its cross-attention through ``norm_memory`` as
        keys and values, not as a residual); an encoder block's norm1 and norm2."""
        return (block.norm1, block.norm2, block.norm3) if isinstance(block, DecoderLayer) else (block.norm1, block.norm2)

    def attention_forward(self, module, attend: Attend):
        return context_attention_forward(module, attend)

    def forward(self, x):
        """Class logits (B, queries, classes + 1), "no object" last."""
        return self.net(x)[0]

    def detect(self, x):
        """(class logits (B, queries, classes + 1), boxes (B, queries, 4) as (cx, cy, w, h) fractions of the image)."""
        return self.net(x)


class VitxCLIPAdapter(ImageTextAdapter, WordText, ListedSites, VitxAdapter):
    """vitx's image-text model (:mod:`vitx.models.clip`): its image tower's blocks are "image" self-attention sites,
    then its text tower's "text" sites; the text is pooled at [CLS]."""

    def describe(self) -> Description:
        cfg = self.net.cfg
        return Description(pair(cfg.image_size), pair(cfg.patch_size), 1, 0, 0, dynamic_size=False, kind="clip",
                           text_length=cfg.max_length)

    def _named_sites(self) -> list[tuple[nn.Module, Site]]:
        found = [(b.attn, Site(f"visual.blocks.{i}", "image", "image", i)) for i, b in enumerate(self.net.visual.blocks)]
        return found + [(b.attn, Site(f"text_blocks.{i}", "text", "text", i)) for i, b in enumerate(self.net.text_blocks)]

    def blocks(self) -> list[nn.Module]:
        """The image tower's blocks, then the text tower's."""
        return [*self.net.visual.blocks, *self.net.text_blocks]

    def attention_forward(self, module, attend: Attend):
        if isinstance(module, Attention):
            return context_attention_forward(module, attend)
        return vit_attention_forward(module, attend)

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        return block.norm1, block.norm2

    def pixel_layer(self) -> nn.Module:
        return patch_pixel_layer(self.net.visual.patch_embed)

    def forward(self, x, text: Text):
        """s(x_r, t_r) per row, (B, 1), through the network's own forward (where the tap's hooks sit): the diagonal
        of its (B, B) similarities."""
        return self.net(x, text.ids, text.mask).diagonal()[:, None]

    def image_features(self, x):
        return self.net.visual(x)

    def text_features(self, text: Text):
        return self.net.text_features(text.ids, text.mask)

    def project_tokens(self, pooled):
        return self.net.visual.head(self.net.visual.norm(pooled))

    def similarity_scale(self):
        return self.net.logit_scale.exp(), None
