"""The attention tap (``vitx.trace``) on vitx's, timm's and Hugging Face's ViTs: what it records, how it
edits attention scores per key token, and that it leaves the model exactly as it found it."""
import contextlib

import pytest
import torch

import vitx
from reference import VITX_SMALL, close, images, jitter, snapshot, target_score, tiny_hf, tiny_timm
from vitx.models import create_model

FRAMEWORKS = {
    "vitx": lambda: jitter(create_model("vit_small_patch16_224", **VITX_SMALL)),
    "timm": tiny_timm,
    "hf": lambda: tiny_hf("ViTForImageClassification", "sdpa"),
}
N = 65  # class token + 8x8 patches


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def net(request):
    return FRAMEWORKS[request.param]()


@pytest.fixture(scope="module")
def x():
    return images(2, 3, 64, 64)


def test_records_attentions_tokens_and_gradients(net, x):
    model = vitx.load_model(net)
    with torch.no_grad():
        expected = model(x)
    with vitx.trace(model) as tr:
        logits = model(x)
    close(logits.detach(), expected, rtol=1e-5)
    assert [a.shape for a in tr.attentions] == [(2, 4, N, N)] * 3
    assert [t.shape for t in tr.tokens] == [(2, N, 64)] * 3
    for a in tr.attentions:
        assert a.min() >= 0 and torch.allclose(a.sum(-1), torch.ones(2, 4, N))
    score = target_score(logits)
    grads = tr.gradients(score, retain_graph=True)
    assert [g.shape for g in grads] == [(2, 4, N, N)] * 3 and all(g.abs().max() > 0 for g in grads)
    last = tr.gradients(score, of="tokens")[-1]
    # the head reads the class token of the last block's output: the patches there get no gradient
    assert last[:, 0].abs().amax(-1).gt(0).all() and torch.equal(last[:, 1:], torch.zeros_like(last[:, 1:]))


def test_records_only_the_blocks_named(net, x):
    """``attentions=[...]`` keeps A of those blocks only (negative indices count from the last); the other
    blocks keep the model's own attention, so the logits do not change."""
    model = vitx.load_model(net)
    with torch.no_grad(), vitx.trace(model) as every:
        expected = model(x)
    with torch.no_grad(), vitx.trace(model, attentions=[-1, 0], tokens=False) as tr:
        close(model(x), expected, rtol=1e-5)
    assert len(tr.attentions) == 2 and tr.tokens == []
    close(tr.attentions[0], every.attentions[0])
    close(tr.attentions[1], every.attentions[2])
    with torch.no_grad(), vitx.trace(model, attentions=False) as none:
        close(model(x), expected, rtol=1e-5)
    assert none.attentions == [] and len(none.tokens) == 3
    with pytest.raises(vitx.VitxError, match="block 3 does not exist: this model has 3 blocks"):
        with vitx.trace(model, attentions=[3]):
            pass
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_gradients_are_per_image(net, x):
    """Each image's attention gradient depends on its own target only."""
    with vitx.trace(net) as tr:
        logits = vitx.load_model(net)(x)
    both = tr.gradients(target_score(logits))[0]
    with vitx.trace(net) as tr:
        logits = vitx.load_model(net)(x[:1])
    close(both[:1], tr.gradients(target_score(logits))[0])


@pytest.mark.parametrize("exit", ["normal", "exception"])
def test_model_restored_on_exit(net, x, exit):
    model = vitx.load_model(net)
    before = snapshot(net)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(RuntimeError, match="inside") if exit == "exception" else contextlib.nullcontext():
        with vitx.trace(model, key_mask=torch.ones(N)) as tr:
            model(x)
            assert snapshot(net) != before and len(tr.attentions) == 3
            assert all("forward" in m.__dict__ for m in model.adapter.attentions())
            if exit == "exception":
                raise RuntimeError("inside")
    assert snapshot(net) == before
    assert not any("forward" in m.__dict__ for m in net.modules())
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_explain_restores_training_mode(net, x):
    net.train()
    try:
        before = snapshot(net)
        vitx.explain(net, x, method="generic-attention")
        assert snapshot(net) == before and net.training
    finally:
        net.eval()


def test_key_mask_zeroes_masked_keys(net, x):
    mask = torch.ones(N, dtype=torch.bool)
    mask[[0, 5, 40]] = False
    with torch.no_grad(), vitx.trace(net, key_mask=mask) as tr:
        vitx.load_model(net)(x)
    for a in tr.attentions:
        assert torch.equal(a[..., ~mask], torch.zeros_like(a[..., ~mask]))
        assert a[..., mask].min() > 0 and torch.allclose(a.sum(-1), torch.ones(2, 4, N))


def test_per_image_key_mask(net, x):
    """A (B, N) mask masks each image's own keys: image i gets what image i alone gets with row i."""
    model = vitx.load_model(net)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[0, [3, 4]] = False
    mask[1, 10] = False
    with torch.no_grad(), vitx.trace(model, key_mask=mask) as tr:
        logits = model(x)
    for a in tr.attentions:
        assert a[0, ..., [3, 4]].max() == 0 and a[1, ..., 10].max() == 0
        assert a[0, ..., 10].min() > 0 and a[1, ..., [3, 4]].min() > 0
    for i in range(2):
        with torch.no_grad(), vitx.trace(model, key_mask=mask[i]) as alone:
            close(model(x[i:i + 1]), logits[i:i + 1], rtol=1e-5)
        close(alone.attentions[-1][0], tr.attentions[-1][i], rtol=1e-5)


def test_key_scale(net, x):
    """Ones change nothing; otherwise block 0's attention is softmax(scores * scale) per key."""
    model = vitx.load_model(net)
    scores = []

    def keep(block, s):
        scores.append((block, s))
        return s
    with torch.no_grad():
        with vitx.trace(model, edit=keep) as plain:
            expected = model(x)
        with vitx.trace(model, key_scale=torch.ones(N)) as ones:
            assert torch.equal(model(x), expected)
        scale = torch.rand(2, N, generator=torch.Generator().manual_seed(0)) * 2
        with vitx.trace(model, key_scale=scale) as scaled:
            model(x)
    assert [b for b, _ in scores] == [0, 1, 2]
    assert all(torch.equal(a, b) for a, b in zip(ones.attentions, plain.attentions))
    close(scaled.attentions[0], (scores[0][1] * scale[:, None, None]).softmax(-1), rtol=1e-5)
    assert not torch.allclose(scaled.attentions[0], plain.attentions[0])


def test_edit_replaces_scores(net, x):
    """An edit returning zero scores makes every block attend uniformly."""
    with torch.no_grad(), vitx.trace(net, edit=lambda block, s: torch.zeros_like(s)) as tr:
        vitx.load_model(net)(x)
    for a in tr.attentions:
        close(a, torch.full_like(a, 1 / N), rtol=1e-6)


@pytest.mark.parametrize("shape", [(N - 1,), (3, N), (2, 1, N)])
def test_key_mask_of_wrong_shape(net, x, shape):
    with pytest.raises(vitx.VitxError, match=r"key_scale and key_mask must be \(N,\) or \(B, N\)"):
        with vitx.trace(net, key_mask=torch.ones(shape)):
            vitx.load_model(net)(x)
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_image_not_a_multiple_of_the_patch_size():
    net = create_model("vit_small_patch16_224", **VITX_SMALL)
    with pytest.raises(vitx.VitxError, match="60x64 is not a multiple of the patch size 8x8"):
        vitx.explain(net, images(1, 3, 60, 64), method="rollout")


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_attention_masks_as_the_framework_takes_them(kind):
    """A timm attention called with a mask (True: attend, or added to the scores) gives under the tap what it gives
    on its own."""
    net = tiny_timm()
    attn = net.blocks[0].attn
    tokens = images(2, 65, 64)
    keep = torch.rand(2, 1, 65, 65, generator=torch.Generator().manual_seed(0)) > 0.3
    keep |= torch.eye(65, dtype=torch.bool)                                   # every query keeps itself
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    with torch.no_grad():
        expected = attn(tokens, attn_mask=mask)
        with vitx.trace(net):
            traced = attn(tokens, attn_mask=mask)
    torch.testing.assert_close(traced, expected, rtol=1e-5, atol=1e-5)
