"""open_clip's ``CLIP`` (``open_clip.create_model(arch)``) as an image-text model, and ``open_clip:<arch>`` loading.

Both towers are open_clip's own transformers: ``ResidualAttentionBlock``s whose attention is an
``nn.MultiheadAttention`` (batch first, one packed in-projection). Sites: the image tower's blocks ("image"
self-attention, the class token first, then the patches of ``conv1`` row by row), then the text tower's ("text").
The tap replaces each attention's ``forward``: q, k, v from ``in_proj_weight``, heads split, the product through
the tap with the mask open_clip passes (the text tower's causal mask, additive), heads merged, ``out_proj``.
Prompts are read by open_clip's BPE tokenizer (``open_clip.get_tokenizer(arch)``: start and end of text, zeros to
the context length); the text is pooled where ``text_pool_type`` says: "argmax" (the end-of-text token, the largest
id), "eos", "first" or "last". The similarity is ``exp(logit_scale) · cos + logit_bias`` (the bias of SigLIP-style
models, where there is one).
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import state_dict_error
from ..errors import VitxError
from ..text import Text
from .base import Adapter, Attend, Description, ListedSites, Site, pair, project_values
from .hf.two_towers import checked_lengths
from .image_text import ImageTextAdapter

POOLS = ("argmax", "eos", "first", "last")       # text_pool_type values with one pooled token


class OpenClipAdapter(ImageTextAdapter, ListedSites, Adapter):
    framework = "open_clip"

    def __init__(self, net: nn.Module):
        super().__init__(net)
        from open_clip.transformer import VisionTransformer
        name = type(net).__name__
        if not hasattr(net, "transformer") or not isinstance(getattr(net, "visual", None), VisionTransformer):
            raise VitxError(f"open_clip {name}: vitx reads open_clip's CLIP with its own ViT image tower and text "
                            "transformer (not a timm or ResNet image tower, nor a Hugging Face text tower)")
        visual = net.visual
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise VitxError(f"open_clip {name}: its image tower pools {visual.pool_type!r}"
                            f"{' with an attentional pooler' if visual.attn_pool is not None else ''}; vitx reads "
                            "image towers pooled at the class token ('tok')")
        if net.text_pool_type not in POOLS:
            raise VitxError(f"open_clip {name}: its text is pooled {net.text_pool_type!r}; vitx reads {POOLS}")
        for i, (module, site) in enumerate(self._named_sites()):
            if not isinstance(module, nn.MultiheadAttention) or not module.batch_first or \
                    not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
                raise VitxError(f"open_clip {name}: {site.name}'s attention ({type(module).__name__}) is not the "
                                "nn.MultiheadAttention of open_clip's default blocks (batch first, one packed "
                                "in-projection); the tap reads that one only")
        self._tokenizer = None

    def _named_sites(self) -> list[tuple[nn.Module, Site]]:
        found = [(b.attn, Site(f"visual.transformer.resblocks.{i}", "image", "image", i))
                 for i, b in enumerate(self.net.visual.transformer.resblocks)]
        return found + [(b.attn, Site(f"transformer.resblocks.{i}", "text", "text", i))
                        for i, b in enumerate(self.net.transformer.resblocks)]

    def blocks(self) -> list[nn.Module]:
        """The image tower's blocks, then the text tower's."""
        return [*self.net.visual.transformer.resblocks, *self.net.transformer.resblocks]

    def describe(self) -> Description:
        visual = self.net.visual
        mean, std = (tuple(getattr(visual, f"image_{what}", None) or ()) or None for what in ("mean", "std"))
        return Description(pair(visual.image_size), pair(visual.patch_size), 1, 0, 0, dynamic_size=False,
                           kind="clip", mean=mean, std=std, text_length=int(self.net.context_length))

    def attention_forward(self, module: nn.MultiheadAttention, attend: Attend):
        def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            if not (query is key is value) or key_padding_mask is not None:
                raise VitxError("the tap reads open_clip's self-attention (query, key and value the same tokens, "
                                "no key padding mask)")
            if need_weights:
                raise VitxError("under the tap, nn.MultiheadAttention gives no weights of its own (need_weights=True): "
                                "read them from the tap (tr.attentions)")
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                attn_mask = ~attn_mask                 # nn.MultiheadAttention's True: masked; the tap's: attended
            elif attn_mask is None and is_causal:
                attn_mask = torch.ones(query.shape[1], query.shape[1], dtype=torch.bool, device=query.device).tril()
            B, N, D = query.shape
            q, k, v = (t.reshape(B, N, module.num_heads, -1).transpose(1, 2)
                       for t in F.linear(query, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1))
            out = attend(q, k, v, module.head_dim ** -0.5, module.dropout if module.training else 0.0, attn_mask)
            return module.out_proj(out.transpose(1, 2).reshape(B, N, D)), None
        return forward

    def value_projection(self, module: nn.MultiheadAttention):
        return partial(project_values, module.out_proj)

    def pixel_layer(self) -> nn.Module:
        return self.net.visual.conv1

    def residual_branches(self, block) -> tuple[nn.Module, ...]:
        return block.ln_1, block.ln_2

    def layer_kind(self, module: nn.Module) -> str:
        return "activation" if type(module).__name__ == "QuickGELU" else super().layer_kind(module)

    def text_embedding(self) -> nn.Module:
        return self.net.token_embedding

    # the text
    def use_tokenizer(self, tokenizer) -> None:
        if not all(hasattr(tokenizer, a) for a in ("encode", "decode", "sot_token_id", "eot_token_id")):
            raise VitxError(f"tokenizer must be open_clip's BPE tokenizer (open_clip.get_tokenizer(arch), a "
                            f"SimpleTokenizer), got {type(tokenizer).__name__}")
        self._tokenizer = tokenizer

    def tokenizer(self):
        """The tokenizer given, else open_clip's BPE tokenizer at the model's context where its vocabulary is that
        tokenizer's (49,408 ids)."""
        if self._tokenizer is not None:
            return self._tokenizer
        from open_clip.tokenizer import SimpleTokenizer
        tokenizer = SimpleTokenizer(context_length=self.net.context_length)
        if self.net.vocab_size != len(tokenizer.encoder):
            raise VitxError(f"this open_clip model reads {self.net.vocab_size} token ids, not those of open_clip's "
                            "BPE tokenizer: pass its tokenizer, wrap(net, tokenizer=open_clip.get_tokenizer(arch))")
        self._tokenizer = tokenizer
        return tokenizer

    def encode_text(self, prompts: list[str], unknown: str = "warn") -> Text:
        """Prompts -> ids (T, context): start of text, the BPE tokens, end of text, zeros after. ``unknown`` is
        accepted for the common signature: a BPE tokenizer spells any word."""
        tokenizer, context = self.tokenizer(), int(self.net.context_length)
        lengths = checked_lengths(prompts, lambda prompt: len(tokenizer.encode(prompt)) + 2, context)
        ids = tokenizer(prompts, context_length=context)
        mask = torch.arange(context) < torch.tensor(lengths)[:, None]
        tokens = tuple(tuple(tokenizer.decode([i]).strip() for i in row[kept].tolist()) for row, kept in zip(ids, mask))
        return Text(ids, mask, tokens)

    def head_token(self, text: Text) -> torch.Tensor:
        """The pooled text token's column, as open_clip's ``text_global_pool`` finds it."""
        ids, pool = text.ids, self.net.text_pool_type
        if pool == "argmax":
            return ids.argmax(-1)
        if pool == "eos":
            return (ids == self.net.text_eos_id).int().argmax(-1)
        return torch.full((len(text),), 0 if pool == "first" else ids.shape[1] - 1, dtype=torch.long,
                          device=ids.device)

    # the similarity
    def image_features(self, x):
        return self.net.encode_image(x)

    def text_features(self, text: Text):
        return self.net.encode_text(text.ids)

    def project_tokens(self, pooled):
        visual = self.net.visual
        pooled = visual.ln_post(pooled)
        return pooled if visual.proj is None else pooled @ visual.proj

    def similarity_scale(self):
        return self.net.logit_scale.exp(), self.net.logit_bias

    def forward(self, x: torch.Tensor, text: Text) -> torch.Tensor:
        """s(x_r, t_r) per row, (B, 1), from the embeddings the model's own forward gives."""
        out = self.net(x, text.ids)      # positional, so that the tap's pre-hook sees the pixels
        image, words = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        return self.pair_scores(image, words)


def load(arch: str, weights: str | None) -> tuple[nn.Module, dict]:
    """``open_clip.create_model(arch)`` with the weights of a local file (.safetensors, .pt, .pth or .bin: open_clip's
    state dict, read by ``open_clip.load_checkpoint``), and ``open_clip.get_tokenizer(arch)``."""
    try:
        import open_clip
    except ImportError as err:
        raise VitxError(f"loading 'open_clip:{arch}' needs open_clip_torch installed (pip install "
                        f"'vitx[clip]'; {err})") from None
    if open_clip.get_model_config(arch) is None:
        known = open_clip.list_models()
        raise VitxError(f"open_clip has no architecture {arch!r}; it has {len(known)}, e.g. "
                        f"{', '.join(known[:6])} (open_clip.list_models())")
    if weights is None:
        raise VitxError(f"'open_clip:{arch}' needs weights='FILE': a local state dict (.safetensors, .pt or .bin); "
                        "vitx downloads no open_clip weights")
    if not Path(weights).is_file():
        raise VitxError(f"weights file {str(weights)!r} for open_clip model {arch!r} does not exist")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)     # open_clip's warning that it loaded no pretrained weights: ours come next
    try:
        net = open_clip.create_model(arch, pretrained=None)
    finally:
        logging.disable(previous)
    try:
        open_clip.load_checkpoint(net, str(weights))
    except Exception as err:  # an unreadable file or one for another architecture
        raise VitxError(f"could not load weights for open_clip model {arch!r} from the file {str(weights)!r}: "
                        f"{state_dict_error(err)}") from None
    return net, {"name": f"open_clip:{arch}", "tokenizer": open_clip.get_tokenizer(arch)}
