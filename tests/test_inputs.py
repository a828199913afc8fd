"""What comes in and what goes out: images checked rather than corrupted, method parameters typed and
ranged, degenerate maps flagged, taps that refuse to nest, maps back at each image's original size, and
outputs named after their images."""
import dataclasses
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitx
from vitx.images import TOLERANCE
from vitx.registry import get_method, method_names
from vitx.scaling import screen

from reference import HF_SMALL, TIMM_SMALL

SAMPLES = sorted((Path(vitx.__file__).parent / "data" / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


def grey(model, level):
    """The model input of a 64x64 image of one grey level in [0, 1]."""
    return model.normalize(torch.full((1, 3, 64, 64), float(level)))


# ---- images in -----------------------------------------------------------------------------------------

def test_float_pixels_beyond_unit_range_are_refused_not_clamped(model):
    levels = torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(0)) * 255
    for image in (levels, levels.permute(1, 2, 0).numpy()):       # a float tensor and a float array in 0-255
        with pytest.raises(vitx.VitxError, match=r"image 0 has values up to 2\d\d.*divide 8-bit levels by 255"):
            model.preprocess(image)
    normalised = model.preprocess(SAMPLES[0])[0]                    # model input handed to preprocess again
    with pytest.raises(vitx.VitxError, match="image 1 has values down to -"):
        model.preprocess([levels / 255, normalised])
    # divided by 255 as the message says, the same image reads as its uint8 twin
    as_uint8 = (levels.round()).to(torch.uint8)
    torch.testing.assert_close(model.preprocess(as_uint8.float() / 255), model.preprocess(as_uint8))
    # resampling overshoot within the tolerance is clamped
    overshoot = torch.full((3, 64, 64), 1 + TOLERANCE / 2)
    torch.testing.assert_close(model.preprocess(overshoot), grey(model, 1.0))


def test_nan_and_inf_are_refused_naming_the_image(model):
    good = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    for bad_value in (float("nan"), float("inf"), -float("inf")):
        bad = good.clone()
        bad[1, 5, 7] = bad_value
        with pytest.raises(vitx.VitxError, match="image 2 has NaN or infinite values"):
            model.preprocess([good, good, bad])
        x = model.preprocess([good, good])
        x[1, 0, 3, 3] = bad_value
        with pytest.raises(vitx.VitxError, match="model input image 1 has NaN or infinite values"):
            vitx.explain(model, x, "rollout")


def test_float_images_from_files_keep_their_values(model, tmp_path):
    array = np.full((20, 30), 0.25, np.float32)
    path = tmp_path / "float.tiff"
    Image.fromarray(array, mode="F").save(path)
    assert Image.open(path).mode == "F"
    torch.testing.assert_close(model.preprocess(path), grey(model, 0.25))          # was black: read as 0-255
    torch.testing.assert_close(model.preprocess(Image.fromarray(array * 4, mode="F")), grey(model, 1.0))
    Image.fromarray(array * 255, mode="F").save(path)
    with pytest.raises(vitx.VitxError, match=r"image 0 \('float'\) has values up to 63.75"):
        model.preprocess(path)


def test_raw_pixels_handed_to_explain_as_model_input_are_warned_about(model):
    raw = vitx.data.shapes(n=4, seed=0).images
    for pixels in (raw, raw * 255):
        with pytest.warns(UserWarning, match=r"spans \[0, (1|255)\] like raw pixels.*model.preprocess"):
            vitx.explain(model, pixels, "rollout")
    with pytest.raises(vitx.VitxError, match="must be a float tensor, got torch.uint8"):
        vitx.explain(model, (raw * 255).to(torch.uint8), "rollout")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in (vitx.data.shapes(n=200, seed=1), vitx.data.shapes(n=200, seed=2, variant="multi")):
            vitx.explain(model, model.preprocess(data.images), "raw-attention")
        vitx.explain(model, model.preprocess(SAMPLES), "raw-attention")
        vitx.explain(model, torch.zeros(1, 3, 64, 64), "raw-attention")          # the mean image: ambiguous
        vitx.explain(model, torch.randn(2, 3, 64, 64) * 2, "raw-attention")      # noise around the mean
        identity = vitx.load_model(model.net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        vitx.explain(identity, raw, "raw-attention")                             # [0, 1] is its input space


# ---- maps out ------------------------------------------------------------------------------------------

def test_screen_flags_constant_and_non_finite_maps():
    maps = torch.stack([torch.arange(16.0).view(4, 4), torch.full((4, 4), 3.0), torch.zeros(4, 4),
                        torch.arange(16.0).view(4, 4), torch.full((4, 4), 1e4) + torch.rand(4, 4) * 1e-4])
    maps[3, 1, 1] = float("nan")
    screened, degenerate = screen(maps)
    assert degenerate.tolist() == [False, True, True, True, True]
    assert torch.isfinite(screened).all() and (screened[3] == 0).all()
    torch.testing.assert_close(screened[:3], maps[:3])


def test_explain_flags_degenerate_maps_and_keeps_nan_out(model, monkeypatch):
    def broken(batch, block=-1):
        maps = torch.rand(batch.x.shape[0], 8, 8, generator=torch.Generator().manual_seed(0))
        maps[0, 2, 2], maps[1] = float("nan"), 0.5
        return maps
    fake = dataclasses.replace(get_method("raw-attention"), fn=broken)
    monkeypatch.setattr(sys.modules["vitx.explain"], "get_method", lambda name: fake)
    x = model.preprocess(SAMPLES[:3])
    for normalize in (True, False):
        exp = vitx.explain(model, x, "raw-attention", normalize=normalize)
        assert exp.degenerate.tolist() == [True, True, False]
        assert torch.isfinite(exp.maps).all() and torch.isfinite(exp.token_maps).all()
        assert (exp.maps[0] == 0).all()
    monkeypatch.undo()
    assert not vitx.explain(model, x, "generic-attention").degenerate.any()


def test_zero_class_token_gives_finite_beyond_intuition_maps():
    """A Hugging Face DeiT at its random init has a zero class token and zero position embeddings: the
    token enters block 0 with norm 0, which made every beyond-intuition-token map NaN."""
    import transformers
    torch.manual_seed(0)
    net = transformers.DeiTForImageClassification(transformers.DeiTConfig(**HF_SMALL)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    exp = vitx.explain(net, x, "beyond-intuition-token", steps=2, normalize=False)
    assert torch.isfinite(exp.token_maps).all() and not exp.degenerate.any()


def test_all_zero_attention_gradcam_is_flagged():
    """attention-gradcam's ReLU leaves nothing of a random timm ViT's map for one of these images."""
    import timm
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch16_224", **TIMM_SMALL).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    exp = vitx.explain(net, x, "attention-gradcam", normalize=False)
    zero = exp.token_maps.flatten(1).abs().amax(1) == 0
    assert zero.any() and exp.degenerate.tolist() == zero.tolist()


# ---- method parameters ---------------------------------------------------------------------------------

def wrong_type(types):
    """A value of none of ``types``."""
    return [1] if str in types else "ten"


@pytest.mark.parametrize("name", method_names())
def test_a_parameter_of_the_wrong_type_is_one_vitx_error(model, name):
    info = get_method(name)
    for param, types in info.types.items():
        value = wrong_type(types)
        with pytest.raises(vitx.VitxError, match=rf"method '{name}': parameter '{param}' must be .*got {re.escape(repr(value))}"):
            vitx.explain(model, torch.zeros(1, 3, 64, 64), name, **{param: value})


@pytest.mark.parametrize("name", method_names())
def test_every_range_is_enforced_at_its_ends(name):
    info = get_method(name)
    for param, interval in info.ranges.items():
        low, high = (float(end) for end in interval[1:-1].split(","))
        step = 1 if int in info.types[param] else 1e-3
        outside = [low - step] + ([] if high == float("inf") else [high + step])
        outside += [low] if interval[0] == "(" else []
        outside += [high] if interval[-1] == ")" and high != float("inf") else []
        for value in outside:
            with pytest.raises(vitx.VitxError, match=rf"parameter '{param}' must be in \{interval[0]}"):
                info.bind({param: value})
        if interval[0] == "[":
            assert info.bind({param: low})[param] == low


def test_parameters_from_the_command_line_are_coerced():
    ig = get_method("integrated-gradients")
    assert ig.bind({"steps": "10"})["steps"] == 10 and isinstance(ig.bind({"steps": 10.0})["steps"], int)
    assert ig.bind({"baseline": "0.5"})["baseline"] == 0.5 and ig.bind({"baseline": "black"})["baseline"] == "black"
    assert get_method("smoothgrad").bind({"noise_level": "0.2"})["noise_level"] == 0.2
    assert get_method("vit-shapley").bind({"explainer": Path("a/b")})["explainer"] == "a/b"
    for bad in (True, "ten", 2.5, None):
        with pytest.raises(vitx.VitxError, match="parameter 'steps' must be int"):
            ig.bind({"steps": bad})
    with pytest.raises(vitx.VitxError, match=r"'smoothgrad': parameter 'noise_level' must be in \[0, inf\), got -1"):
        get_method("smoothgrad").bind({"noise_level": -1})
    with pytest.raises(vitx.VitxError, match=r"must be in \[0, inf\), got 'nan'"):
        get_method("smoothgrad").bind({"noise_level": "nan"})


def test_registry_rows_show_ranges():
    rows = {row["name"]: row for row in vitx.methods()}
    assert rows["beyond-intuition-head"]["ranges"]["steps"] == "[2, inf)"
    assert rows["rollout"]["ranges"] == {"discard_ratio": "[0, 1)", "start_layer": "[0, inf)"}


# ---- the tap -------------------------------------------------------------------------------------------

def untouched(net):
    return all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m) for m in net.modules())


def test_nested_taps_are_refused_and_leave_the_model_clean(model):
    x = model.preprocess(SAMPLES[:2])
    with vitx.trace(model) as outer:
        with pytest.raises(vitx.VitxError, match="already open on this model"):
            with vitx.trace(model.net, attentions=[0]):
                pass
        with pytest.raises(vitx.VitxError, match="already open on this model"):
            vitx.explain(model, x, "rollout")
        model(x)
    assert len(outer.attentions) == 6 and len(outer.tokens) == 6          # the outer tap still recorded
    assert untouched(model.net)
    with vitx.trace(model) as again:                                      # and a new one opens afterwards
        model(x)
    assert len(again.attentions) == 6 and untouched(model.net)


# ---- sizes and names -----------------------------------------------------------------------------------

def ramp(height, width):
    """A smooth (3, h, w) image: bilinear resampling keeps it, so round trips are exact up to rounding."""
    y, x = torch.meshgrid(torch.linspace(0.1, 0.9, height), torch.linspace(0.2, 0.8, width), indexing="ij")
    return torch.stack([y, x, (x + y) / 2])


@pytest.mark.parametrize("size", [(48, 120), (160, 64), (64, 64), (20, 30)])
@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_frames_take_model_pixels_back_to_the_original(model, resize, size):
    image = ramp(*size)
    x, (frame,) = model.preprocess(image, resize=resize, frames=True)
    assert x.shape == (1, 3, 64, 64) and frame.size == size
    back = frame.to_original(model.denormalize(x)[0], fill=-1.0)
    assert back.shape == (3, *size)
    seen = back[0] >= 0
    if resize == "crop" and size[0] != size[1]:                 # a centred band of the long side, short side wide
        along = seen.any(0) if size[1] > size[0] else seen.any(1)
        first, count = int(along.float().argmax()), int(along.sum())
        assert abs(count - min(size)) <= 1 and abs(first - (max(size) - count) / 2) <= 1
        assert seen.all(0)[along].all() if size[1] > size[0] else seen.all(1)[along].all()
    else:
        assert seen.all()
    torch.testing.assert_close(back[:, seen], image[:, seen], atol=0.02, rtol=0)
    if resize == "pad" and size[0] != size[1]:                   # the letterbox is the model's mean colour: 0
        border = x[0, :, 0, :] if size[1] > size[0] else x[0, :, :, 0]
        assert border.abs().max() < 1e-6


def test_a_crop_maps_relevance_back_to_the_object(model):
    """The shape sits in the middle of a wide canvas: "crop" explains exactly that square, and the map goes back
    to the canvas there, with 0 where the crop cut the canvas away."""
    data = vitx.data.shapes(n=4, seed=3)
    for image, mask in zip(data.images, data.masks):
        canvas = image[:, :, :1].expand(3, 64, 160).clone()                 # the image's left column, widened
        canvas[:, :, 48:112] = image
        for size in (1, 2):                                                 # at the model's size and twice it
            big = torch.nn.functional.interpolate(canvas[None], scale_factor=size, mode="nearest")[0]
            x, frames = model.preprocess(big, resize="crop", frames=True)
            exp = vitx.explain(model, x, "generic-attention")
            exp.frames = frames
            direct = vitx.explain(model, [image], "generic-attention") if size == 1 else None
            mapped = exp.original_map(0)
            assert mapped.shape == (64 * size, 160 * size)
            assert (mapped[:, :48 * size] == 0).all() and (mapped[:, 112 * size:] == 0).all()
            if direct is not None:
                torch.testing.assert_close(mapped[:, 48:112], direct.maps[0], atol=1e-5, rtol=0)
            placed = torch.zeros(64, 160, dtype=torch.bool)
            placed[:, 48:112] = mask
            placed = placed.repeat_interleave(size, 0).repeat_interleave(size, 1)
            inside = torch.zeros_like(placed)
            inside[:, 48 * size:112 * size] = True
            assert mapped[placed].mean() > 2 * mapped[inside & ~placed].mean()


def test_crop_is_not_the_default(model):
    image = ramp(48, 120)
    x, (frame,) = model.preprocess(image, frames=True)
    assert frame.scale == (64 / 48, 64 / 120) and frame.offset == (0.0, 0.0)
    torch.testing.assert_close(x, model.preprocess(image, resize="stretch"))
    with pytest.raises(vitx.VitxError, match="resize must be 'stretch', 'crop', 'pad'"):
        model.preprocess(image, resize="squash")


def test_outputs_are_named_after_their_images(model, tmp_path):
    exp = vitx.explain(model, [str(SAMPLES[0]), SAMPLES[1], Image.open(SAMPLES[2]), torch.rand(3, 64, 64)],
                       "rollout")
    assert exp.names() == [SAMPLES[0].stem, SAMPLES[1].stem, SAMPLES[2].stem, "003"]
    written = exp.save(tmp_path / "a", scale=1)
    assert sorted(p.name for p in written) == sorted(f"{n}_rollout.{s}" for n in exp.names() for s in ("png", "npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "a" / f"{SAMPLES[1].stem}_rollout.npy"), exp.maps[1].numpy())
    twice = vitx.explain(model, [SAMPLES[0], SAMPLES[0]], "rollout")
    assert twice.names() == [f"000_{SAMPLES[0].stem}", f"001_{SAMPLES[0].stem}"]
    assert vitx.explain(model, model.preprocess(SAMPLES[:2]), "rollout").names() == ["000", "001"]
    for names, message in ((["a"], "1 names for 4 images"), (["a", "b", "c", "a"], "same name"),
                           (["a", "b/c", "d", "e"], "plain file name"), (["a", "", "d", "e"], "plain file name")):
        with pytest.raises(vitx.VitxError, match=message):
            exp.save(tmp_path / "b", names=names)
    assert not (tmp_path / "b").exists()
    exp.save(tmp_path / "c", names=["w", "x", "y", "z"])
    assert (tmp_path / "c" / "z_rollout.png").exists()


def test_original_map_needs_frames(model):
    exp = vitx.explain(model, model.preprocess(SAMPLES[:1]), "rollout")
    with pytest.raises(vitx.VitxError, match="original sizes"):
        exp.original_map(0)
    image = ramp(48, 120)
    x, frames = model.preprocess(image, resize="pad", frames=True)
    exp = vitx.explain(model, x, "rollout")
    exp.frames = frames
    assert exp.original_map(0).shape == (48, 120)
