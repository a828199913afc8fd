"""vitx.explain on an image-text model: Chefer et al.'s CLIP rule and LeGrad against formulas written here on a tiny
two-block tower, many-by-many pairs against one pair at a time, targets, and bad input."""
import pytest
import torch
import torch.nn.functional as F

import vitx
from vitx.data import shapes_captions
from vitx.errors import VitxError
from vitx.model import wrap
from vitx.models import create_model

PROMPTS = ["a red star", "a blue circle and a green square", "a photo of a heart"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = create_model("clip_shapes", image_size=16, patch_size=8, embed_dim=32, num_heads=2, image_layers=2,
                       text_layers=2, proj_dim=16).eval()
    return wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def images(tiny):
    data = shapes_captions(n=3, seed=7, image_size=32)
    return tiny.normalize(F.interpolate(data.images, size=16, mode="bilinear", antialias=True))


def attention_by_hand(module, x, padding=None):
    """softmax(q kᵀ / √d + mask) for a vitx attention module's input x, from its qkv weights."""
    B, N, D = x.shape
    heads = module.num_heads
    q, k, _ = F.linear(x, module.qkv.weight, module.qkv.bias).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) * (D // heads) ** -0.5
    if padding is not None:
        scores = scores.masked_fill(~padding[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def recorded(net, image, ids, mask):
    """The pair's similarity and every block's attention and output tokens, image tower then text tower, with
    each block's attention recomputed by hand in a forward hook that replaces the block's attention output."""
    kept, tokens, hooks = [], [], []

    def replace(module, args, kwargs, output):
        x = args[0]
        padding = kwargs.get("key_padding", args[2] if len(args) > 2 else None)
        a = attention_by_hand(module, x, padding)
        kept.append(a)
        B, N, D = x.shape
        v = F.linear(x, module.qkv.weight, module.qkv.bias).reshape(B, N, 3, module.num_heads, -1)[:, :, 2]
        return module.proj((a @ v.transpose(1, 2)).transpose(1, 2).reshape(B, N, D))

    for block in [*net.visual.blocks, *net.text_blocks]:
        hooks.append(block.attn.register_forward_hook(replace, with_kwargs=True))
        hooks.append(block.register_forward_hook(lambda m, i, o: tokens.append(o)))
    try:
        similarity = net(image, ids, mask)[0, 0]
    finally:
        for hook in hooks:
            hook.remove()
    return similarity, kept, tokens


def chefer_rows(similarity, attentions, start):
    """R = I; R += E_h[(∇A ⊙ A)⁺] R over the blocks from ``start``."""
    gradients = torch.autograd.grad(similarity, attentions, retain_graph=True)
    R = torch.eye(attentions[0].shape[-1])
    for a, g in list(zip(attentions, gradients))[start:]:
        R = R + (g * a).clamp(min=0).mean(1)[0] @ R
    return R


@pytest.mark.parametrize("start", [None, 0])
def test_clip_rule_on_a_two_block_tower_by_hand(tiny, images, start):
    exp = vitx.explain(tiny, images, text=PROMPTS, method="generic-attention", normalize=False,
                       start_layer=start, start_layer_text=start)
    text = tiny.encode_text(PROMPTS)
    for row, (i, p) in enumerate(exp.pairs.tolist()):
        similarity, attentions, _ = recorded(tiny.net, images[i:i + 1], text.ids[p:p + 1], text.mask[p:p + 1])
        first = 1 if start is None else 0
        image_R = chefer_rows(similarity, attentions[:2], first)
        text_R = chefer_rows(similarity, attentions[2:], first)
        torch.testing.assert_close(exp.token_maps[row].flatten(), image_R[0, 1:], rtol=1e-4, atol=1e-6)
        expected = text_R[0].clone() * text.mask[p]
        expected[0] = 0             # [CLS]: the pooled token itself
        torch.testing.assert_close(exp.text_maps[row], expected, rtol=1e-4, atol=1e-6)
        assert exp.logits[row, p] == pytest.approx(similarity.item(), rel=1e-5)


def test_legrad_by_hand(tiny, images):
    exp = vitx.explain(tiny, images, text=PROMPTS, method="legrad", normalize=False)
    text = tiny.encode_text(PROMPTS)
    net = tiny.net
    for row, (i, p) in enumerate(exp.pairs.tolist()):
        _, attentions, tokens = recorded(net, images[i:i + 1], text.ids[p:p + 1], text.mask[p:p + 1])
        prompt = net.encode_text(text.ids[p:p + 1], text.mask[p:p + 1]).detach()
        expected = 0
        for block in (0, 1):    # layers=2: both blocks of the tower
            feature = F.normalize(net.visual.head(net.visual.norm(tokens[block].mean(1))), dim=-1)
            gradient, = torch.autograd.grad((feature * prompt).sum(), attentions[block], retain_graph=True)
            expected = expected + gradient.clamp(min=0).mean(1).mean(1)[0, 1:]
        torch.testing.assert_close(exp.token_maps[row].flatten(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["generic-attention", "legrad", "gradcam", "saliency", "occlusion", "smoothgrad",
                                    "kernel-shap"])
def test_many_by_many_equals_one_pair_at_a_time(tiny, images, method):
    together = vitx.explain(tiny, images, text=PROMPTS, method=method, batch_size=4)
    assert together.pairs.tolist() == [[i, p] for i in range(3) for p in range(3)]
    for row, (i, p) in enumerate(together.pairs.tolist()):
        alone = vitx.explain(tiny, images[i:i + 1], text=[PROMPTS[p]], method=method)
        torch.testing.assert_close(together.maps[row], alone.maps[0], rtol=1e-4, atol=1e-5)
        if together.text_maps is not None:
            torch.testing.assert_close(together.text_maps[row], alone.text_maps[0], rtol=1e-4, atol=1e-5)
        assert together.text_tokens[row] == alone.text_tokens[0]


def test_a_target_picks_one_prompt_per_image(tiny, images):
    every = vitx.explain(tiny, images, text=PROMPTS, method="generic-attention")
    chosen = vitx.explain(tiny, images, text=PROMPTS, method="generic-attention", target=[2, "a red star", 1])
    assert chosen.pairs.tolist() == [[0, 2], [1, 0], [2, 1]]
    assert chosen.targets.tolist() == [2, 0, 1] and chosen.class_names == tuple(PROMPTS)
    torch.testing.assert_close(chosen.maps, every.maps[[2, 3, 7]])
    torch.testing.assert_close(chosen.logits, every.logits[[2, 3, 7]])
    # the logits are each image's similarities with every prompt, as the model gives them
    with torch.no_grad():
        text = tiny.encode_text(PROMPTS)
        torch.testing.assert_close(chosen.logits, tiny.net(images, text.ids, text.mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "pass one or more prompts"),
    ({"text": []}, "non-empty list of prompts"),
    ({"text": ["a red star", "  "]}, "prompt 1 is empty"),
    ({"text": ["a red star " * 6]}, "more than max_length=16"),
    ({"text": ["a red star"], "target": 1}, "target prompt 1 is out of range: 1 prompt given"),
    ({"text": ["a red star"], "start_layer": 2}, "start_layer=2 is beyond the image tower's 2 blocks"),
    ({"text": ["a red star"], "method": "legrad", "layers": 3}, "layers=3 is more than the image tower's 2 blocks"),
    ({"text": ["a red star"], "method": "rise", "score": "probability"}, "one score, its similarity"),
])
def test_bad_input_is_one_clear_error_and_leaves_no_hook(tiny, images, kwargs, message):
    kwargs = {"method": "generic-attention", **kwargs}
    with pytest.raises(VitxError, match=message):
        vitx.explain(tiny, images, **kwargs)
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in tiny.net.modules())


def test_start_layers_are_refused_off_image_text_models():
    vit = vitx.load_model("shapes-vit")
    with pytest.raises(VitxError, match="image-text model's towers"):
        vitx.explain(vit, torch.zeros(1, 3, 64, 64), start_layer=1)


def test_frozen_weights_give_the_same_maps(tiny, images):
    import copy
    frozen = wrap(copy.deepcopy(tiny.net).requires_grad_(False), mean=(0.5,) * 3, std=(0.25,) * 3)
    for method in ("generic-attention", "legrad"):
        torch.testing.assert_close(vitx.explain(frozen, images, text=PROMPTS, method=method).maps,
                                   vitx.explain(tiny, images, text=PROMPTS, method=method).maps)


def test_forward_only_methods_share_each_image_across_its_prompts(tiny, images, monkeypatch):
    """The image tower runs once per distinct image (vitx.prompts.pair_similarities), with the same maps."""
    import vitx.batch
    shared = vitx.explain(tiny, images, text=PROMPTS, method="rise", masks=32)
    seen = []
    features = tiny.adapter.image_features
    monkeypatch.setattr(tiny.adapter, "image_features", lambda x: seen.append(len(x)) or features(x))
    vitx.explain(tiny, images, text=PROMPTS, method="rise", masks=32, internal_batch_size=9)
    assert seen and max(seen) == 3      # 9 rows of one copy: 3 images, each with its 3 prompts
    monkeypatch.setattr(vitx.batch, "plain", lambda tap: False)
    torch.testing.assert_close(vitx.explain(tiny, images, text=PROMPTS, method="rise", masks=32).maps, shared.maps)
