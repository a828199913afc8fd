"""timm's EVA-02, EVA, DeiT III, DINOv2 with registers and BEiT, and torchvision's ViT, through the tap, beyond
what tests/test_families.py checks on their catalog entries (tests/families_timm.py, families_torchvision.py):
EVA with a class-token head (three layouts of its attention) leaves logits and model as they were, the
recorded attention and its gradients equal hook-made ones and the attention maps their formulas; timm's rope
ViTs, EVA's projected values, and the relevance rules' refusals before any forward pass."""
import pytest
import torch

import vitx
from families_builtin import timm_hooked_attentions
from families_timm import FAMILIES as TIMM, SMALL_56, small
from families_torchvision import FAMILIES as TORCHVISION
from reference import check_against_hooks, close, images, snapshot

CATALOG = {f.name: (f.build, f.size, f.attentions) for f in TIMM + TORCHVISION}
# EVA with a class-token head, so that the class-token formulas apply: EVA-02 tiny (fused qkv with q/v biases,
# rope, SwiGLU), EVA-02 base's layout (separate q/k/v projections, a norm in the SwiGLU) and EVA v1 (no rope)
EVA = {
    "EVA-02 token": (small("eva02_tiny_patch14_224", **SMALL_56, ref_feat_shape=(4, 4), global_pool="token"),
                     (56, 56), timm_hooked_attentions),
    "EVA-02 separate qkv": (small("eva02_base_patch14_224", **SMALL_56, ref_feat_shape=(4, 4), global_pool="token"),
                            (56, 56), timm_hooked_attentions),
    "EVA token": (small("eva_giant_patch14_224", **SMALL_56, mlp_ratio=4, global_pool="token"), (56, 56),
                  timm_hooked_attentions),
}
CASES = {**CATALOG, **EVA}
WITH_ATTENTIONS = [name for name, (_, _, attentions) in CASES.items() if attentions is not None]


@pytest.fixture(scope="module")
def built():
    """{case: (net, x)}, built once."""
    return {name: (build(), images(2, 3, *size)) for name, (build, size, _) in CASES.items()}


@pytest.mark.parametrize("case", list(EVA))
def test_tap_changes_nothing(built, case):
    net, x = built[case]
    before = snapshot(net)
    with torch.no_grad():
        expected = net(x)
        with vitx.trace(net) as tr:
            logits = net(x)
    close(logits, expected, rtol=1e-5)
    layout = vitx.load_model(net).layout(x)
    tokens = layout.num_prefix + layout.grid[0] * layout.grid[1]
    assert len(tr.attentions) == len(vitx.load_model(net).adapter.blocks())
    assert all(a.shape[0] == 2 and a.shape[-2:] == (tokens, tokens) for a in tr.attentions)
    assert snapshot(net) == before
    with pytest.raises(RuntimeError, match="inside"):
        with vitx.trace(net):
            net(x)
            raise RuntimeError("inside the tap")
    assert snapshot(net) == before


@pytest.mark.parametrize("case", WITH_ATTENTIONS)
def test_attention_and_maps_match_hooks_and_formulas(built, case):
    net, x = built[case]
    model = vitx.load_model(net)
    layout = model.layout(x)
    check_against_hooks(net, x, *CASES[case][2](net, x), layout.num_prefix, layout.grid, model.config.pooling)


@pytest.mark.parametrize("name, kw", [("vit_small_patch16_rope_224", {}), ("vit_small_patch16_rope_mixed_224", {}),
                                      ("vit_small_patch16_rope_224", dict(qkv_fused=False, num_kv_heads=2))])
def test_rope_vits_of_timms_eva_module(name, kw):
    """timm's ViTs with rotary embeddings built on EVA's modules (AttentionRope; per-block rope in the mixed
    variant; grouped-query attention with 2 key/value heads for 4 query heads): the same logits and attention
    under the tap as on timm's own unfused path."""
    net = small(name, depth=2, embed_dim=64, num_heads=4, num_classes=5, img_size=64, patch_size=8, **kw)()
    x = images(2, 3, 64, 64)
    logits, attentions = timm_hooked_attentions(net, x)
    with torch.no_grad(), vitx.trace(net) as tr:
        close(net(x), logits.detach(), rtol=1e-5)
    for ours, theirs in zip(tr.attentions, attentions):
        close(ours, theirs.detach())


def test_eva_projected_values():
    """One head: EVA's attention output is Σ_j A_ij v_j W_oᵀ + b_o, with the values the tap projects."""
    net = small("eva_giant_patch14_224", **{**SMALL_56, "num_heads": 1}, mlp_ratio=4)()
    x = images(2, 3, 56, 56)
    outputs = []
    hooks = [block.attn.register_forward_hook(lambda m, i, out: outputs.append(out)) for block in net.blocks]
    with torch.no_grad(), vitx.trace(net, projected_values=True) as tr:
        net(x)
    for hook in hooks:
        hook.remove()
    for block, a, values, out in zip(net.blocks, tr.attentions, tr.projected_values, outputs):
        close(a[:, 0] @ values + block.attn.proj.bias, out)


def test_eva_inner_norm_refuses_projected_values():
    net = small("eva02_tiny_patch14_224", **SMALL_56, ref_feat_shape=(4, 4), scale_attn_inner=True)()
    before = snapshot(net)
    with pytest.raises(vitx.VitxError, match=r"^timm model eva02_tiny_patch14_224: its attention normalises "
                                             r"\(scale_norm, scale_attn_inner\) or gates .* projected_values for it$"):
        with vitx.trace(net, projected_values=True):
            pass
    assert snapshot(net) == before


@pytest.mark.parametrize("case, method, message", [
    ("EVA-02 token", "lrp", r"^timm model eva02_tiny_patch14_224: its block type timm.models.eva.EvaBlock is not "
                            r"the pre-norm Block of timm's ViT"),
    ("EVA-02 token", "transformer-attribution", r"EvaBlock is not the pre-norm Block"),
    ("EVA-02 token", "attnlrp", r"^the AttnLRP rules have none for layer 'blocks.0.mlp.act' \(SiLU\)$"),
    ("EVA token", "partial-lrp", r"EvaBlock is not the pre-norm Block"),
    ("timm BEiT (beit_*)", "lrp", r"timm.models.beit.Block is not the pre-norm Block"),
    ("torchvision ViT (vit_*)", "lrp", r"^torchvision's ViT projects q, k and v with nn.MultiheadAttention's "
                                       r"in_proj_weight, not with a Linear layer"),
    ("torchvision ViT (vit_*)", "transformer-attribution", r"in_proj_weight"),
])
def test_relevance_refused_before_any_forward(built, case, method, message):
    """Rules that cannot bind to the family refuse in one line before anything runs, on a model never run."""
    net = CASES[case][0]()
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(vitx.VitxError, match=message):
        vitx.explain(net, built[case][1], method=method)
    assert calls == []
