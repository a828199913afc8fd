"""Half-precision models (float16, bfloat16) are explained in float32 under ``vitx.precision.in_float32``: the
same maps as the float32 model with the same (rounded) weights, one warning, and the user's model given back
in its own dtype, the same parameter objects, on error too."""
import warnings
from dataclasses import replace

import pytest
import torch

import vitx
from reference import images, tiny_timm
from vitx.precision import in_float32
from vitx import registry


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_model_explained_in_float32_and_restored(dtype):
    net = tiny_timm().to(dtype)
    reference = tiny_timm().to(dtype).float()             # the same rounded weights, held in float32
    params = list(net.parameters())
    x = images(2, 3, 64, 64)
    with pytest.warns(UserWarning, match=f"the model is {str(dtype)[6:]}; the explanation is computed in float32") \
            as caught:
        ours = vitx.explain(net, x, method="generic-attention", normalize=False)   # explain() converts by itself
    assert len(caught) == 1
    theirs = vitx.explain(reference, x, method="generic-attention", normalize=False)
    assert torch.equal(ours.maps, theirs.maps) and torch.equal(ours.logits, theirs.logits)
    assert list(net.parameters()) == params and all(p.dtype == dtype for p in net.parameters())


def test_restored_on_error_and_silent_for_float32():
    net = tiny_timm().half()
    with pytest.warns(UserWarning), pytest.raises(vitx.VitxError):
        with in_float32(net):
            assert all(p.dtype == torch.float32 for p in net.parameters())
            vitx.explain(net, images(1, 3, 48, 48), method="rollout")     # a wrong size: an error inside
    assert all(p.dtype == torch.float16 for p in net.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with in_float32(tiny_timm()) as converted:
            assert converted == ()


@pytest.mark.parametrize("fails", [False, True])
def test_tf32_off_during_explain_and_restored(monkeypatch, fails):
    """CUDA's TF32 (on by default for convolutions) is off while a method runs, and the user's settings come back
    after the call, on error too."""
    seen = []

    def method(batch, **params):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        if fails:
            raise vitx.VitxError("inside the method")
        return torch.zeros(batch.x.shape[0], *batch.layout.grid)
    monkeypatch.setitem(registry._METHODS, "raw-attention", replace(registry.get_method("raw-attention"), fn=method))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        try:
            vitx.explain(tiny_timm(), images(2, 3, 64, 64), method="raw-attention")
        except vitx.VitxError:
            assert fails
        assert seen == [(False, False)]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
