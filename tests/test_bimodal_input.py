"""Bad input to a bi-modal explanation: one clear VitxError before any work, the model left as it was."""
import warnings

import pytest
import torch

import vitx
from vitx.errors import VitxError
from vitx.model import wrap
from vitx.models import create_model


@pytest.fixture(scope="module")
def vqa():
    torch.manual_seed(0)
    model = wrap(create_model("vqa_shapes_dual").eval(), mean=(0.5,) * 3, std=(0.25,) * 3)
    return model, model.normalize(vitx.data.shapes_vqa(2, seed=1).images)


@pytest.mark.parametrize("text, message", [
    (None, "answers questions about images: pass one question per image"),
    (["is there a red star?"], "got 1 question for 2 images"),
    (["is there a red star?", "   "], "question 1 is empty"),
    (["is there a red star?", "what colour is the small red star left of the big blue circle?"],
     "question 1 has 14 tokens, more than max_length=12"),
    ([1, 2], "text must be a string per image"),
])
def test_bad_text_is_one_line(vqa, text, message):
    model, x = vqa
    with pytest.raises(VitxError, match=message) as caught:
        vitx.explain(model, x, text=text)
    assert "\n" not in str(caught.value)
    assert not any(isinstance(m.__dict__.get("forward"), type(lambda: 0)) for m in model.net.modules())


def test_text_for_an_image_only_model():
    with pytest.raises(VitxError, match=r"text was given \(--text\), and this 'vit' model reads images only"):
        vitx.explain(vitx.load_model("shapes-vit"), torch.zeros(1, 3, 64, 64), text=["is there a star?"])


def test_words_outside_the_vocabulary_become_unknown_and_are_named(vqa):
    model, x = vqa
    with pytest.warns(UserWarning, match=r"encoded as \[UNK\]: \['hexagon'\]"):
        exp = vitx.explain(model, x, text=["is there a red hexagon?", "is there a red star?"])
    assert exp.text_tokens[0] == ("[CLS]", "is", "there", "a", "red", "[UNK]", "?", "[SEP]")


def test_an_answer_that_does_not_exist(vqa):
    model, x = vqa
    with pytest.raises(VitxError, match="unknown target class 'maybe'"):
        vitx.explain(model, x, text=["is there a red star?"] * 2, target="maybe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exp = vitx.explain(model, x, text=["is there a red star?"] * 2, target="yes")
    assert exp.target_name(0) == "yes"
