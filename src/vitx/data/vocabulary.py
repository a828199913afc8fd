"""A word-level tokenizer with a fixed vocabulary, for vitx's own text models.

Text is lower-cased and split into words (runs of letters and digits) and single punctuation marks, so
"Is there a red star?" becomes ``is there a red star ?``. Every question is encoded as ``[CLS] words [SEP]``
then padded with ``[PAD]``; the special tokens have fixed ids 0-3 and the words follow in the order given.
"""
from __future__ import annotations

import re
import warnings

import torch

from ..errors import VitxError

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
PAD, CLS, SEP, UNK = range(len(SPECIAL_TOKENS))
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text):
    """Lower-case ``text`` and split it into words and punctuation marks."""
    return _TOKEN.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary: ``encode`` questions to ids, ``decode`` ids to text.

    Words outside the vocabulary map to ``[UNK]`` with a warning naming them (``unknown="warn"``, the default),
    or are refused with a VitxError naming them (``unknown="error"``).
    """

    def __init__(self, words):
        words = tuple(dict.fromkeys(words))
        bad = [w for w in words if split_words(w) != [w]]
        if bad:
            raise VitxError(f"vocabulary words must be lower-case single words or marks, got {bad}")
        self.tokens = SPECIAL_TOKENS + words
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self):
        return len(self.tokens)

    def __repr__(self):
        return f"WordTokenizer({len(self)} tokens)"

    def encode(self, questions, max_length, unknown="warn", noun="question"):
        """Ids (B, max_length) int64 and attention mask (B, max_length) bool of ``[CLS] words [SEP] [PAD]...``.

        ``max_length`` counts [CLS] and [SEP]. The word at position j of a question is at column j + 1. Errors name
        a text by ``noun`` ("prompt 0 is empty").
        """
        if isinstance(questions, str):
            questions = [questions]
        if unknown not in ("warn", "error"):
            raise VitxError(f"unknown must be 'warn' or 'error', got {unknown!r}")
        if not isinstance(max_length, int) or max_length < 3:
            raise VitxError(f"max_length must be an integer >= 3 ([CLS], a word, [SEP]), got {max_length!r}")
        if not questions or not all(isinstance(q, str) for q in questions):
            raise VitxError(f"{noun}s must be a non-empty list of strings")
        words = [split_words(q) for q in questions]
        for i, w in enumerate(words):
            if not w:
                raise VitxError(f"{noun} {i} is empty: {questions[i]!r}")
            if len(w) + 2 > max_length:
                raise VitxError(f"{noun} {i} has {len(w)} tokens, more than max_length={max_length} takes with "
                                f"[CLS] and [SEP]: {questions[i]!r}")
        missing = sorted({t for w in words for t in w if t not in self.ids})
        if missing and unknown == "error":
            raise VitxError(f"words outside the vocabulary: {missing}")
        if missing:
            warnings.warn(f"words outside the vocabulary, encoded as [UNK]: {missing}", stacklevel=2)
        ids = torch.full((len(words), max_length), PAD, dtype=torch.int64)
        for i, w in enumerate(words):
            ids[i, : len(w) + 2] = torch.tensor([CLS] + [self.ids.get(t, UNK) for t in w] + [SEP])
        return ids, ids != PAD

    def decode(self, ids):
        """Text of each row of ``ids`` (B, L) or (L,), without [CLS], [SEP] and [PAD]; marks attach to the word
        before them, so decoding an encoded template question gives it back."""
        ids = torch.as_tensor(ids)
        rows = ids[None] if ids.dim() == 1 else ids
        texts = []
        for row in rows.tolist():
            text = ""
            for i in row:
                if not 0 <= i < len(self.tokens):
                    raise VitxError(f"token id {i} is outside the vocabulary of {len(self)} tokens")
                if i in (PAD, CLS, SEP):
                    continue
                token = self.tokens[i]
                text += token if not text or (len(token) == 1 and not token.isalnum()) else " " + token
            texts.append(text)
        return texts[0] if ids.dim() == 1 else texts
