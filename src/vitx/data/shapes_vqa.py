"""Visual question answering on the shapes images, with ground truth on both the image and the words.

Each item is one image with 2 to 4 objects (a shape from ``CLASS_NAMES`` in a colour from ``COLOURS``, drawn
with the primitives of :mod:`vitx.data.shapes`: masks pixel-exact, objects apart, the contrast rule kept) and
one templated question. The question is sampled first, its answer uniformly among the answers of its type and
independently of the words in it, then a scene that gives that answer: so no type can be answered from the
text alone (see docs/data.md for the measurement). Item ``i`` depends only on ``(seed, i)`` and the image size.

Types and ground truth (``gt_objects``: the objects the answer depends on; ``gt_words``: the question tokens
that name them):

- existence, "is there a red star?" (no / yes): every red star; the words "red" and "star". For "no" there is
  no such object: ``gt_objects`` is empty and ``gt_words`` still marks the queried "red" and "star".
- attribute, "what colour is the star?" (a colour): the one star; "star".
- identity, "what shape is the red object?" (a shape): the one red object; "red".
- counting, "how many stars are there?" (0 to 4): every star (none for 0); "stars".
- spatial, "what colour is the object left of the star?" (a colour): the object asked about and the one star;
  "star". Asked only when unambiguous: the star is the only star, exactly one object's centre lies on that
  side of the star's centre, and every other object's centre is at least ``image_size / 8`` from it in x.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VitxError
from .shapes import _SIZE, CLASS_NAMES, _background, _clutter, _draw_object, _layout
from .vocabulary import WordTokenizer, split_words

COLOURS = {  # named RGB values, each at least 0.3 (mean absolute) from most background colours
    "red": (0.86, 0.1, 0.1),
    "green": (0.1, 0.7, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.12),
    "purple": (0.55, 0.12, 0.75),
    "orange": (0.97, 0.52, 0.05),
}
COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array(list(COLOURS.values()), np.float32)
PLURALS = tuple(name + ("es" if name.endswith("s") else "s") for name in CLASS_NAMES)
SIDES = ("left", "right")
TEMPLATES = {
    "existence": "is there a {colour} {shape}?",
    "attribute": "what colour is the {shape}?",
    "identity": "what shape is the {colour} object?",
    "counting": "how many {shapes} are there?",
    "spatial": "what colour is the object {side} of the {shape}?",
}
QUESTION_TYPES = tuple(TEMPLATES)
COUNTS = ("0", "1", "2", "3", "4")
ANSWERS = ("no", "yes") + COLOUR_NAMES + CLASS_NAMES + COUNTS
TYPE_ANSWERS = {"existence": ("no", "yes"), "attribute": COLOUR_NAMES, "identity": CLASS_NAMES,
                "counting": COUNTS, "spatial": COLOUR_NAMES}
MAX_OBJECTS = 4
_FILLERS = COLOUR_NAMES + CLASS_NAMES + PLURALS + SIDES
TOKENIZER = WordTokenizer([w for t in TEMPLATES.values() for w in split_words(re.sub(r"{\w+}", " ", t))]
                          + list(_FILLERS))
MAX_LENGTH = max(len(split_words(re.sub(r"{\w+}", "x", t))) for t in TEMPLATES.values()) + 2  # [CLS], [SEP]
_STREAM = 7  # rng stream key, apart from shapes()'s variants


@dataclass(frozen=True)
class _Spec:
    """One question and the scene that answers it: objects as (shape id, colour id), before any drawing."""

    kind: str
    question: str
    answer: str
    objects: list
    gt: list        # indices into objects
    words: list     # question words (strings) that name the ground truth
    side: str | None = None  # spatial: objects[0] is the anchor, objects[1] the object asked about


def _pick(rng, n, exclude=()):
    return int(rng.choice([j for j in range(n) if j not in exclude]))


def _spec(rng):
    """Sample a question type, an answer uniform within the type, the question's words, then a scene."""
    kind = QUESTION_TYPES[rng.integers(len(QUESTION_TYPES))]
    c, s, k = int(rng.integers(len(COLOURS))), int(rng.integers(len(CLASS_NAMES))), int(rng.integers(2, 5))
    shape, colour = CLASS_NAMES[s], COLOUR_NAMES[c]

    def rand_colour():
        return int(rng.integers(len(COLOURS)))

    if kind == "existence":
        yes = bool(rng.random() < 0.5)
        objects = [(s, c)] if yes else []
        if rng.random() < 0.5:  # half the scenes of either answer have objects matching one of the two words
            objects += [(s, _pick(rng, len(COLOURS), {c})), (_pick(rng, len(CLASS_NAMES), {s}), c)]
        while len(objects) < k:
            pair = (int(rng.integers(len(CLASS_NAMES))), rand_colour())
            if pair != (s, c):
                objects.append(pair)
        objects = [objects[:k][j] for j in rng.permutation(k)]
        gt = [j for j, o in enumerate(objects) if o == (s, c)]
        return _Spec(kind, f"is there a {colour} {shape}?", "yes" if yes else "no", objects, gt, [colour, shape])
    if kind == "attribute":
        objects = [(s, c)] + [(_pick(rng, len(CLASS_NAMES), {s}), rand_colour()) for _ in range(k - 1)]
        order = rng.permutation(k)
        return _Spec(kind, f"what colour is the {shape}?", colour, [objects[j] for j in order],
                     [int(np.argmin(order))], [shape])
    if kind == "identity":
        objects = [(s, c)] + [(int(rng.integers(len(CLASS_NAMES))), _pick(rng, len(COLOURS), {c}))
                              for _ in range(k - 1)]
        order = rng.permutation(k)
        return _Spec(kind, f"what shape is the {colour} object?", shape, [objects[j] for j in order],
                     [int(np.argmin(order))], [colour])
    if kind == "counting":
        m = int(rng.integers(len(COUNTS)))
        k = int(rng.integers(max(2, m), MAX_OBJECTS + 1))
        objects = [(s, rand_colour()) for _ in range(m)]
        objects += [(_pick(rng, len(CLASS_NAMES), {s}), rand_colour()) for _ in range(k - m)]
        objects = [objects[j] for j in rng.permutation(k)]
        gt = [j for j, o in enumerate(objects) if o[0] == s]
        return _Spec(kind, f"how many {PLURALS[s]} are there?", str(m), objects, gt, [PLURALS[s]])
    side = SIDES[rng.integers(2)]
    objects = [(s, rand_colour()), (_pick(rng, len(CLASS_NAMES), {s}), c)]
    objects += [(_pick(rng, len(CLASS_NAMES), {s}), rand_colour()) for _ in range(k - 2)]
    return _Spec(kind, f"what colour is the object {side} of the {shape}?", colour, objects, [1, 0], [shape], side)


def _placement(centres, side, size):
    """Which layout slot each object takes: as listed, or for a spatial question the anchor (object 0) second
    from that side and the object asked about (object 1) outermost, every other centre >= size / 8 from the
    anchor's in x; None when the layout cannot give that."""
    if side is None:
        return list(range(len(centres)))
    rank = list(np.argsort([x for x, _ in centres]))
    if side == "right":
        rank.reverse()
    xs = [centres[j][0] for j in rank]
    if any(abs(x - xs[1]) < size / 8 for j, x in enumerate(xs) if j != 1):
        return None
    return [rank[1], rank[0]] + rank[2:]


def draw_scene(rng, objects, size, side=None):
    """Draw ``objects`` ((shape id, colour id) pairs): an image (3, S, S), their masks and centres. ``side``: a
    spatial question's placement (:func:`_placement`). The layout is redrawn until the placement fits, the whole image
    until every named colour keeps the contrast rule against its surroundings (about 2.7 draws for 2 objects, 6 for
    4: so a background is a little less likely near an object's colour)."""
    lo, hi = _SIZE["multi"]
    while True:
        centres, radii = _layout(rng, size, len(objects), lo, hi)
        slots = _placement(centres, side, size)
        if slots is None:
            continue
        img = _background(rng, size)
        _clutter(rng, img, size)
        masks = []
        for (s, c), j in zip(objects, slots):
            mask = _draw_object(rng, img, CLASS_NAMES[s], centres[j], radii[j], _PALETTE[c])
            if mask is None:
                break
            masks.append(mask)
        else:
            return img, masks, [centres[j] for j in slots]


def _specs(n, seed):
    """The first ``n`` specs of ``seed``, without drawing (item i's rng draws its spec first)."""
    return [_spec(np.random.default_rng([seed, _STREAM, i])) for i in range(n)]


@dataclass(frozen=True, eq=False, repr=False)
class ShapesVQAData:
    """n (image, question) pairs with answers and ground truth on both modalities; objects padded to 4 slots.

    images (n, 3, H, W) float in [0, 1]; questions: n strings; input_ids, attention_mask (n, L) from
    ``TOKENIZER.encode(questions, MAX_LENGTH)``; answers (n,) int64 into ``ANSWERS``; types (n,) int64 into
    ``QUESTION_TYPES``; object_shapes, object_colours (n, 4) int64 into CLASS_NAMES and COLOUR_NAMES, -1 for an
    empty slot; object_centres (n, 4, 2) float (x, y) pixels; object_masks (n, 4, H, W) bool; gt_objects (n, 4)
    bool (for a spatial question slot 0 is the anchor, slot 1 the object asked about); gt_words (n, L) bool over
    input_ids' columns.
    """

    images: torch.Tensor
    questions: tuple
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answers: torch.Tensor
    types: torch.Tensor
    object_shapes: torch.Tensor
    object_colours: torch.Tensor
    object_centres: torch.Tensor
    object_masks: torch.Tensor
    gt_objects: torch.Tensor
    gt_words: torch.Tensor
    seed: int

    answer_names = ANSWERS
    type_names = QUESTION_TYPES
    tokenizer = TOKENIZER

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.input_ids[i], self.attention_mask[i], self.answers[i]

    def __repr__(self):
        return f"ShapesVQAData(n={len(self)}, image_size={self.images.shape[-1]}, seed={self.seed})"

    @property
    def gt_masks(self):
        """(n, H, W) bool: the union of the ground-truth objects' masks (all False where there are none)."""
        return (self.object_masks & self.gt_objects[:, :, None, None]).any(1)


def shapes_vqa(n=500, seed=0, image_size=64, objects=(2, 4)):
    """Generate ``n`` seeded (image, question, answer) items with ground truth as a ShapesVQAData."""
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise VitxError(f"{name} must be an integer >= {low}, got {value!r}")
    if tuple(objects) != (2, MAX_OBJECTS):
        raise VitxError(f"objects must be (2, {MAX_OBJECTS}): the question sampler balances answers for that "
                        f"range, got {objects!r}")
    n, size, seed = int(n), int(image_size), int(seed)
    images = np.empty((n, 3, size, size), np.float32)
    shapes_, colours = np.full((n, MAX_OBJECTS), -1, np.int64), np.full((n, MAX_OBJECTS), -1, np.int64)
    centres, masks = np.zeros((n, MAX_OBJECTS, 2), np.float32), np.zeros((n, MAX_OBJECTS, size, size), bool)
    gt_objects, specs = np.zeros((n, MAX_OBJECTS), bool), []
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAM, i])
        spec = _spec(rng)
        images[i], drawn, where = draw_scene(rng, spec.objects, size, spec.side)
        k = len(spec.objects)
        shapes_[i, :k], colours[i, :k] = zip(*spec.objects)
        centres[i, :k], masks[i, :k] = where, drawn
        gt_objects[i, spec.gt] = True
        specs.append(spec)
    questions = tuple(s.question for s in specs)
    ids, attention = TOKENIZER.encode(list(questions), MAX_LENGTH, unknown="error")
    gt_words = torch.zeros_like(attention)
    for i, spec in enumerate(specs):
        words = split_words(spec.question)
        gt_words[i, [j + 1 for j, w in enumerate(words) if w in spec.words]] = True
    return ShapesVQAData(
        torch.from_numpy(images), questions, ids, attention,
        torch.tensor([ANSWERS.index(s.answer) for s in specs]),
        torch.tensor([QUESTION_TYPES.index(s.kind) for s in specs]),
        torch.from_numpy(shapes_), torch.from_numpy(colours), torch.from_numpy(centres), torch.from_numpy(masks),
        torch.from_numpy(gt_objects), gt_words, seed)


def text_only_baseline(train=5000, test=2000, seed=0):
    """Accuracy per question type of the best text-only guess: the majority answer of each exact question string
    in ``train`` questions of ``seed`` (ties to the first answer, unseen strings to the type's majority), tested
    on ``test`` fresh questions of ``seed + 1``. Returns {type: (accuracy, chance, number of test questions)}."""
    votes, by_type = {}, {}
    for spec in _specs(train, seed):
        votes.setdefault(spec.question, {}).setdefault(spec.answer, 0)
        votes[spec.question][spec.answer] += 1
        by_type.setdefault(spec.kind, {}).setdefault(spec.answer, 0)
        by_type[spec.kind][spec.answer] += 1
    hits = {kind: [] for kind in QUESTION_TYPES}
    for spec in _specs(test, seed + 1):
        counts = votes.get(spec.question, by_type[spec.kind])
        hits[spec.kind].append(max(counts, key=counts.get) == spec.answer)
    return {kind: (float(np.mean(h)), 1 / len(TYPE_ANSWERS[kind]), len(h)) for kind, h in hits.items()}
