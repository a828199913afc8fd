import math
import re

import pytest
import torch

from vitx.data import ANSWERS, CLASS_NAMES, COLOURS, QUESTION_TYPES, TOKENIZER, ShapesVQAData, shapes_vqa
from vitx.data.shapes_vqa import MAX_LENGTH, PLURALS, TYPE_ANSWERS, _specs, text_only_baseline
from vitx.data.vocabulary import CLS, PAD, SEP, UNK, WordTokenizer
from vitx.errors import VitxError

COLOUR_NAMES = tuple(COLOURS)


@pytest.fixture(scope="module")
def data():
    return shapes_vqa(n=150, seed=0, image_size=64)


def _scene(data, i):
    """The scene description of item i: [(shape name, colour name, x, mask)] over the filled slots."""
    k = int((data.object_shapes[i] >= 0).sum())
    return [(CLASS_NAMES[int(data.object_shapes[i, j])], COLOUR_NAMES[int(data.object_colours[i, j])],
             float(data.object_centres[i, j, 0]), data.object_masks[i, j]) for j in range(k)]


def _solve(question, scene, size):
    """Answer and ground-truth object indices recomputed from the question text and the scene."""
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        gt = [j for j, o in enumerate(scene) if o[1] == m[1] and o[0] == m[2]]
        return ("yes" if gt else "no"), gt
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        (gt,) = [j for j, o in enumerate(scene) if o[0] == m[1]]  # exactly one
        return scene[gt][1], [gt]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (gt,) = [j for j, o in enumerate(scene) if o[1] == m[1]]
        return scene[gt][0], [gt]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        gt = [j for j, o in enumerate(scene) if PLURALS[CLASS_NAMES.index(o[0])] == m[1]]
        return str(len(gt)), gt
    m = re.fullmatch(r"what colour is the object (left|right) of the (\w+)\?", question)
    (anchor,) = [j for j, o in enumerate(scene) if o[0] == m[2]]
    x = scene[anchor][2]
    side = [j for j, o in enumerate(scene) if (o[2] < x if m[1] == "left" else o[2] > x)]
    assert len(side) == 1  # unambiguous: exactly one object on that side ...
    assert all(abs(o[2] - x) >= size / 8 for j, o in enumerate(scene) if j != anchor)  # ... and clearly so
    return scene[side[0]][1], [side[0], anchor]


def test_shapes_and_dtypes(data):
    n, size = 150, 64
    assert isinstance(data, ShapesVQAData) and len(data) == n and repr(data).startswith("ShapesVQAData(n=150")
    assert data.images.shape == (n, 3, size, size) and data.images.dtype == torch.float32
    assert data.input_ids.shape == data.attention_mask.shape == data.gt_words.shape == (n, MAX_LENGTH)
    assert data.object_masks.shape == (n, 4, size, size) and data.gt_masks.shape == (n, size, size)
    assert data.answers.max() < len(ANSWERS) and data.types.max() < len(QUESTION_TYPES)
    assert set(data.types.tolist()) == set(range(len(QUESTION_TYPES)))
    image, ids, attention, answer = data[3]
    assert torch.equal(ids, data.input_ids[3]) and answer == data.answers[3]
    count = (data.object_shapes >= 0).sum(1)
    assert count.min() == 2 and count.max() == 4


def test_reproducible_and_prefix():
    a, b = shapes_vqa(n=6, seed=3, image_size=32), shapes_vqa(n=6, seed=3, image_size=32)
    big, other = shapes_vqa(n=10, seed=3, image_size=32), shapes_vqa(n=6, seed=4, image_size=32)
    for name in ("images", "input_ids", "answers", "types", "object_shapes", "object_masks", "gt_objects",
                 "gt_words"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert torch.equal(getattr(a, name), getattr(big, name)[:6])
    assert a.questions == big.questions[:6] and not torch.equal(a.images, other.images)


def test_masks_exact_and_apart(data):
    assert (data.object_masks.sum(1) <= 1).all()  # objects never overlap
    for i in range(len(data)):
        image, scene = data.images[i], _scene(data, i)
        assert not data.object_masks[i, len(scene):].any()
        for _, colour, _, mask in scene:
            rgb = torch.tensor(COLOURS[colour])
            assert mask.sum() > 20 and torch.equal(image[:, mask], rgb[:, None].expand(3, int(mask.sum())))
            same = torch.stack([m for _, c, _, m in scene if c == colour]).any(0)
            assert torch.equal((image == rgb[:, None, None]).all(0), same)  # no other pixel has the colour
            grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 7, stride=1, padding=3)[0, 0] > 0
            assert (rgb - image[:, grown & ~mask].mean(1)).abs().mean() >= 0.15  # contrast, as in test_shapes


def test_answers_and_ground_truth_recomputed(data):
    for i in range(len(data)):
        answer, gt = _solve(data.questions[i], _scene(data, i), 64)
        assert ANSWERS[int(data.answers[i])] == answer, data.questions[i]
        assert answer in TYPE_ANSWERS[QUESTION_TYPES[int(data.types[i])]]
        assert sorted(gt) == torch.nonzero(data.gt_objects[i]).flatten().tolist(), data.questions[i]
        assert torch.equal(data.gt_masks[i], data.object_masks[i, gt].any(0) if gt else torch.zeros(64, 64, dtype=bool))


def test_ground_truth_words(data):
    for i in range(len(data)):
        words = [TOKENIZER.tokens[t] for t in data.input_ids[i][data.gt_words[i]]]
        scene, kind = _scene(data, i), QUESTION_TYPES[int(data.types[i])]
        assert words, data.questions[i]
        names = {n for j, o in enumerate(scene) if data.gt_objects[i, j]
                 for n in (o[0], o[1], PLURALS[CLASS_NAMES.index(o[0])])}
        if kind == "existence" and ANSWERS[int(data.answers[i])] == "no":
            colour, shape = words  # the queried words, and no object has both
            assert colour in COLOUR_NAMES and shape in CLASS_NAMES
            assert not any(o[:2] == (shape, colour) for o in scene)
        elif kind == "counting" and ANSWERS[int(data.answers[i])] == "0":
            assert len(words) == 1 and words[0] in PLURALS and not data.gt_objects[i].any()
        else:
            assert set(words) <= names, (data.questions[i], words)
        if kind == "spatial":
            gt = torch.nonzero(data.gt_objects[i]).flatten().tolist()
            assert gt == [0, 1] and [scene[j][0] for j in gt].count(words[0]) == 1  # the anchor's shape only
            assert scene[0][0] == words[0]  # slot 0 is the anchor, slot 1 the object asked about


def test_specs_are_the_data(data):
    assert tuple(s.question for s in _specs(len(data), 0)) == data.questions
    assert [ANSWERS.index(s.answer) for s in _specs(len(data), 0)] == data.answers.tolist()


def test_answers_balanced_per_type():
    specs = _specs(2000, 5)
    for kind in QUESTION_TYPES:
        answers = [s.answer for s in specs if s.kind == kind]
        n, p = len(answers), 1 / len(TYPE_ANSWERS[kind])
        assert abs(n - 400) <= 4 * math.sqrt(2000 * 0.2 * 0.8)
        for a in TYPE_ANSWERS[kind]:  # each answer within 4 standard errors of uniform
            assert abs(answers.count(a) - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (kind, a)


def test_text_alone_does_not_answer():
    # The majority answer of each exact question string is the best text-only model; at chance its accuracy
    # has standard error sqrt(p (1 - p) / n), so 3 of them (~7 points for yes/no, ~5 for colours) bound it.
    for kind, (acc, chance, n) in text_only_baseline(5000, 2000, seed=0).items():
        assert acc <= chance + 3 * math.sqrt(chance * (1 - chance) / n), (kind, acc, chance)


def test_tokenizer_round_trip_and_padding(data):
    assert TOKENIZER.tokens[:4] == ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
    assert TOKENIZER.decode(data.input_ids) == list(data.questions)
    ids, attention = TOKENIZER.encode(["What colour is the STAR?", "is there a red star ?"], 14)
    assert ids.shape == attention.shape == (2, 14) and ids.dtype == torch.int64
    assert ids[0, 0] == CLS and ids[0, 7] == SEP and (ids[0, 8:] == PAD).all()
    assert torch.equal(attention[0], torch.arange(14) < 8) and attention[1].sum() == 8
    assert TOKENIZER.decode(ids[0]) == "what colour is the star?"
    assert TOKENIZER.encode("how many stars are there?", 8)[0].shape == (1, 8)


def test_tokenizer_unknown_words():
    with pytest.warns(UserWarning, match=r"\['dog', 'pink'\]"):
        ids, _ = TOKENIZER.encode(["is there a pink dog?"], 10)
    assert ids[0, 4] == ids[0, 5] == UNK and TOKENIZER.decode(ids[0]) == "is there a [UNK] [UNK]?"
    with pytest.raises(VitxError, match=r"outside the vocabulary: \['dog'\]"):
        TOKENIZER.encode(["is there a dog?"], 10, unknown="error")


@pytest.mark.parametrize("questions, max_length, match", [
    (["is there a red star?", "  ?"[:2]], 12, "question 1 is empty"),
    (["what colour is the object left of the star?"], 11, "question 0 has 10 tokens, more than max_length=11"),
    ([], 12, "non-empty list"),
    (["a"], 2, "max_length"),
])
def test_tokenizer_errors(questions, max_length, match):
    with pytest.raises(VitxError, match=match) as err:
        TOKENIZER.encode(questions, max_length)
    assert "\n" not in str(err.value)


def test_tokenizer_vocabulary():
    with pytest.raises(VitxError, match="single words"):
        WordTokenizer(["red star"])
    with pytest.raises(VitxError, match="outside the vocabulary"):
        TOKENIZER.decode(torch.tensor([len(TOKENIZER)]))


@pytest.mark.parametrize("kwargs, word", [({"n": 0}, "n"), ({"seed": -1}, "seed"), ({"image_size": 16}, "image_size"),
                                          ({"objects": (1, 3)}, "objects")])
def test_bad_arguments(kwargs, word):
    with pytest.raises(VitxError, match=rf"^{word}\b"):
        shapes_vqa(**kwargs)
