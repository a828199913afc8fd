"""vitx.data.shapes_captions: captions that name every object, and the ground truth of each phrase."""
import pytest
import torch

from vitx import VitxError
from vitx.data import CLASS_NAMES, shapes_captions
from vitx.data.shapes_captions import MAX_LENGTH, TOKENIZER, caption, prompts
from vitx.data.shapes_vqa import COLOURS, COLOUR_NAMES


@pytest.fixture(scope="module")
def data():
    return shapes_captions(40, seed=3)


def test_caption_names_every_object_in_order():
    assert caption([(3, 0), (0, 2)]) == "a red star and a blue circle"
    assert caption([(3, 0), (0, 2)], photo=True, coloured=False) == "a photo of a star and a circle"
    assert caption([(3, 0), (0, 2), (5, 1)]) == "a red star, a blue circle and a green heart"
    longest = TOKENIZER.encode(caption([(6, 5), (7, 4), (1, 3)], photo=True), MAX_LENGTH)[1][0]
    assert longest.all()


def test_items_hold_two_or_three_distinct_shapes_painted_in_their_named_colours(data):
    counts = (data.object_shapes >= 0).sum(1)
    assert set(counts.tolist()) == {2, 3}
    for i in range(len(data)):
        k = int(counts[i])
        shapes_ = data.object_shapes[i, :k].tolist()
        assert len(set(shapes_)) == k and (data.object_shapes[i, k:] == -1).all()
        photo = data.captions[i].startswith("a photo of ")
        coloured = bool(data.coloured[i])
        assert data.captions[i] == caption(list(zip(shapes_, data.object_colours[i, :k].tolist())), photo, coloured)
        assert data.phrases(i) == [f"a {COLOUR_NAMES[c]} {CLASS_NAMES[s]}"
                                   for s, c in zip(shapes_, data.object_colours[i, :k].tolist())]
        for slot in range(k):
            mask = data.object_masks[i, slot]
            colour = torch.tensor(COLOURS[COLOUR_NAMES[int(data.object_colours[i, slot])]])
            assert mask.sum() > 20
            assert torch.allclose(data.images[i][:, mask], colour[:, None].expand(-1, int(mask.sum())), atol=1e-6)
        assert not (data.object_masks[i, :k].sum(0) > 1).any()          # objects apart


def test_word_objects_mark_each_objects_colour_and_shape_words(data):
    for i in range(len(data)):
        tokens = [TOKENIZER.tokens[t] for t in data.input_ids[i].tolist()]
        for slot, (s, c) in enumerate(zip(data.object_shapes[i].tolist(), data.object_colours[i].tolist())):
            named = [tokens[j] for j in (data.word_objects[i] == slot).nonzero().flatten().tolist()]
            assert named == ([] if s < 0 else [COLOUR_NAMES[c], CLASS_NAMES[s]][1 - int(data.coloured[i]):])
        assert set(data.word_objects[i][~data.attention_mask[i]].tolist()) <= {-1}


def test_caption_styles_take_their_shares():
    data = shapes_captions(400, seed=4, image_size=32)
    photo = torch.tensor([c.startswith("a photo of") for c in data.captions]).float().mean()
    assert abs(photo - 0.5) < 0.08 and abs(data.coloured.float().mean() - 0.75) < 0.07


def test_items_depend_on_seed_and_index_only():
    small, large = shapes_captions(3, seed=9), shapes_captions(6, seed=9)
    assert torch.equal(small.images, large.images[:3]) and small.captions == large.captions[:3]
    assert not torch.equal(small.images, shapes_captions(3, seed=10).images)


def test_prompts_name_every_class():
    assert prompts() == [f"a photo of a {name}" for name in CLASS_NAMES]
    assert prompts("a photo of a {colour} {shape}", colour="red")[3] == "a photo of a red star"
    for template in ("a photo of a {shape}", "a {shape}"):
        TOKENIZER.encode(prompts(template), MAX_LENGTH, unknown="error")
    with pytest.raises(VitxError, match="needs a colour"):
        prompts("a {colour} {shape}")
    with pytest.raises(VitxError, match="names the shape"):
        prompts("a photo")


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(seed=-1), dict(image_size=16), dict(n=2.5)])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(VitxError):
        shapes_captions(**kwargs)


def test_write_samples_names_each_image_by_its_two_objects(tmp_path):
    from PIL import Image
    import numpy as np
    from vitx.data.shapes_captions import write_samples
    paths = write_samples(tmp_path)
    assert [p.name for p in paths] == ["red_cross_and_orange_square.png", "blue_star_and_orange_cross.png"]
    data = shapes_captions(n=40, seed=2024)
    first = next(i for i in range(40) if data.phrases(i) == ["a red cross", "a orange square"])
    pixels = np.asarray(Image.open(paths[0])).astype(np.float32) / 255
    assert np.abs(pixels - data.images[first].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_single_draws_one_object_per_image_with_its_caption():
    data = shapes_captions(n=20, seed=3, single=True)
    assert (data.object_shapes[:, 0] >= 0).all() and (data.object_shapes[:, 1:] < 0).all()
    assert not data.object_masks[:, 1:].any() and data.object_masks[:, 0].flatten(1).any(1).all()
    assert all(" and " not in c and "," not in c for c in data.captions)
