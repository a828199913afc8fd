"""The pruning framework, DynamicViT and EViT (issue 16): each mechanism on a hand-built case, the methods through
vitx.explain, and their refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitx
from vitx.model import wrap
from vitx.models import create_model
from vitx.errors import StaleModuleError
from vitx.pruning.blocks import gather, parse_stages, run_block
from vitx.pruning.dynamicvit import DynamicViT, dynamicvit_loss
from vitx.pruning.evit import EViT, keep_rate_schedule, reorganise
from vitx.pruning.stages import Stage, kept_lists, survival_map

torch.manual_seed(0)


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def x(model):
    return model.normalize(vitx.data.shapes(n=4, seed=40_000).images)


def small_vit():
    torch.manual_seed(0)
    return create_model("vitx_shapes").eval()


def test_policy_masked_block_equals_the_block_on_the_kept_tokens():
    """DynamicViT's attention masking (training) computes, for the kept tokens, what the block computes on the kept
    tokens alone (inference): the two forms of pruning agree."""
    block = small_vit().blocks[2]
    tokens = torch.randn(2, 9, 96)
    policy = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0]], dtype=torch.float)
    masked, probs = run_block(block, tokens, policy)
    for b in range(2):
        kept = policy[b].nonzero()[:, 0]
        alone = block(tokens[b:b + 1, kept])
        torch.testing.assert_close(masked[b, kept], alone[0], atol=1e-5, rtol=1e-4)
        dropped = (policy[b] == 0).nonzero()[:, 0]
        assert probs[b][:, kept][:, :, dropped].max() < 1e-6          # no kept token reads a dropped one
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 9))


class FirstFeature(torch.nn.Module):
    """A hand-built prediction module: keep log-odds 2·x_i0, the first feature of each token it scores."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, tokens, kept):
        self.seen.append(tokens[..., 0])
        return torch.stack([tokens[..., 0], -tokens[..., 0]], -1).log_softmax(-1)


def test_top_k_keeps_the_tokens_the_predictor_ranks_first():
    """Inference keeps, before stage s, the ⌊P ρ^s⌋ tokens of highest keep probability among those still present."""
    net = DynamicViT(small_vit(), (1, 3), 0.5).eval()
    net.predictors = torch.nn.ModuleList([FirstFeature(), FirstFeature()])
    _, stages = net(torch.randn(3, 3, 64, 64))
    assert [s.kept.shape[1] for s in stages] == [32, 16]
    for predictor, stage in zip(net.predictors, stages):
        feature = predictor.seen[0]
        top = feature.topk(stage.kept.shape[1], dim=1).indices
        assert torch.equal(stage.kept, gather(stage.scored, top))
        torch.testing.assert_close(stage.score, torch.sigmoid(2 * feature))
    assert all(set(b.tolist()) <= set(a.tolist()) for a, b in zip(stages[0].kept, stages[1].kept))


def test_gumbel_decisions_follow_certain_scores_and_only_shrink():
    """A training forward samples hard decisions: certain scores give exact ones, and D ← D ⊙ sample keeps a token
    dropped at one stage dropped at the next."""
    torch.manual_seed(1)
    net = DynamicViT(small_vit(), (1, 3), 0.5).train()
    net.predictors = torch.nn.ModuleList([FirstFeature(), FirstFeature()])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, tokens, final, decisions = net(x)
    first = net.predictors[0].seen[0]
    certain = first.abs() > 5          # keep probability above 1 − 1e-4 or below 1e-4 (sigmoid(±10))
    assert torch.equal(decisions[0][certain], (first[certain] > 0).float())
    assert torch.all(decisions[1] <= decisions[0]) and torch.equal(final, decisions[1])
    assert logits.shape == (2, 8) and tokens.shape == (2, 64, 96)


def test_dynamicvit_loss_on_a_hand_built_case():
    """Teacher equal to the student: only cross-entropy and the keep-ratio term remain. Two stages at ρ = 0.5
    (targets 0.5, 0.25), decisions keeping 3/4 then 1/4 of the tokens in both images: ratio loss
    2 · ((0.75 − 0.5)² + 0) / 2 = 0.0625."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    tokens = torch.randn(2, 4, 3)
    first = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2)
    final = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    loss = dynamicvit_loss((logits, tokens, final, [first, final]), labels, logits, tokens, ratio=0.5)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels) + 0.0625)


def test_evit_fusion_weights_are_the_class_attention_of_the_inattentive_tokens():
    """Hand-built attention: class attention (head mean) 0.1 to itself and 0.4, 0.05, 0.3, 0.15 to four tokens.
    At ρ = 0.5 the two most attended stay (in order) and the fused token is 0.05 x_2 + 0.15 x_4: weights that sum
    to the class token's attention left over, 1 − 0.1 − 0.4 − 0.3 = 0.2, as Eq. 3 has it (not renormalised)."""
    tokens = torch.arange(10, dtype=torch.float).view(1, 5, 2)
    row = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    probs = torch.full((1, 2, 5, 5), 0.2)
    probs[0, 0, 0] = row + torch.tensor([0.02, -0.02, 0.0, 0.02, -0.02])
    probs[0, 1, 0] = row - torch.tensor([0.02, -0.02, 0.0, 0.02, -0.02])
    out, top, attention, weights = reorganise(tokens, probs, 0.5, prefix=1)
    assert top.tolist() == [[0, 2]]                         # positions among the non-prefix tokens
    torch.testing.assert_close(attention, row[None, 1:])
    torch.testing.assert_close(weights.sum(), torch.tensor(0.2))
    torch.testing.assert_close(out[0, :3], tokens[0, [0, 1, 3]])
    torch.testing.assert_close(out[0, 3], 0.05 * tokens[0, 2] + 0.15 * tokens[0, 4])
    assert reorganise(tokens, probs, 0.5, prefix=1, fuse=False)[0].shape == (1, 3, 2)


def test_evit_keeps_the_ceiling_of_rho_times_the_tokens_and_tracks_the_fused_one():
    net = EViT(small_vit(), (1, 3, 4), 0.7)
    _, stages = net(torch.randn(2, 3, 64, 64))
    assert [s.kept.shape[1] for s in stages] == [45, 33, 24]          # ⌈.7·64⌉, ⌈.7·46⌉, ⌈.7·34⌉
    assert [s.scored.shape[1] for s in stages] == [64, 46, 34]        # the fused token (index 64) is ranked too
    assert (stages[1].scored == 64).sum(1).tolist() == [1, 1]


def test_keep_rate_schedule_falls_from_one_to_rho():
    rates = [keep_rate_schedule(step, 100, 0.7) for step in range(100)]
    assert rates[:10] == [1.0] * 10 and rates[-40:] == [pytest.approx(0.7)] * 40
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[35] == pytest.approx(0.85)                            # half-way down the cosine


def test_survival_map_counts_stages_and_breaks_ties_by_the_last_score():
    stages = [Stage(1, torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0.9, 0.2, 0.6, 0.4]]), torch.tensor([[0, 2]])),
              Stage(3, torch.tensor([[0, 2]]), torch.tensor([[0.3, 0.8]]), torch.tensor([[2]]))]
    torch.testing.assert_close(survival_map(stages, 4), torch.tensor([[1.3, 0.2, 2.8, 0.4]]))
    assert kept_lists(stages, 4) == [[[0, 2], [2]]]


def test_parse_stages_refuses_blocks_that_do_not_exist():
    assert parse_stages(None, 12) == (3, 6, 9) and parse_stages(None, 6) == (1, 3, 4)
    assert parse_stages("2,4", 6) == (2, 4)
    for bad in ("0,3", "3,1", "1,6", "a"):
        with pytest.raises(vitx.VitxError, match="stages"):
            parse_stages(bad, 6)


def test_evit_through_explain(model, x):
    exp = vitx.explain(model, x, method="evit")
    assert exp.token_maps.shape == (4, 8, 8) and exp.maps.shape == (4, 64, 64)
    counts = [len(kept) for kept in exp.details["kept"][0]]
    assert counts[0] == 45 and counts[1] in (32, 33) and counts[2] in (23, 24)   # the fused token is no patch
    assert exp.details["stage_blocks"][0] == [1, 3, 4]
    assert len(exp.details["pruned_prediction"]) == 4
    flat = exp.token_maps.flatten(1)
    for image, kept in zip(flat, exp.details["kept"]):          # the last stage's patches rank above all others
        last = set(kept[-1])
        inside = torch.tensor([i in last for i in range(64)])
        assert image[inside].min() > image[~inside].max()


def test_pruning_methods_refuse_bad_input(model, x):
    with pytest.raises(vitx.VitxError, match=r"keep_ratio.*\(0, 1\]"):
        vitx.explain(model, x, method="evit", keep_ratio=1.5)
    with pytest.raises(vitx.VitxError, match=r"keep_ratio.*\(0, 1\]"):
        vitx.explain(model, x, method="dynamicvit", keep_ratio=0)
    with pytest.raises(vitx.VitxError, match="keep_ratio 1 keeps every token"):
        vitx.explain(model, x, method="evit", keep_ratio=1)
    with pytest.raises(vitx.VitxError, match="stages '2,9' do not exist"):
        vitx.explain(model, x, method="evit", stages="2,9")
    pooled = wrap(create_model("vitx_shapes", class_token=False, global_pool="avg"), mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(vitx.VitxError, match="needs a head that reads the class token"):
        vitx.explain(pooled, x, method="evit")
    import timm
    borrowed = vitx.load_model(timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=8))
    with pytest.raises(vitx.VitxError, match="runs the blocks of vitx's own ViT"):
        vitx.explain(borrowed, x, method="evit")


def test_trained_twins_refuse_other_weights(model, x):
    stranger = wrap(small_vit(), mean=(0.5,) * 3, std=(0.25,) * 3)
    for method in ("dynamicvit", "evit-finetuned"):
        with pytest.raises(vitx.VitxError, match="needs a pruned twin module trained for this model"):
            vitx.explain(stranger, x, method=method)
        module = "shapes-vit-dynamicvit" if method == "dynamicvit" else "shapes-vit-evit"
        with pytest.raises(StaleModuleError, match="trained for other weights of 'shapes-vit'"):
            vitx.explain(stranger, x, method=method, module=module)
        with pytest.raises(vitx.VitxError, match="is not a pruned twin module of method"):
            vitx.explain(model, x, method=method, module=str(vitx.zoo.ZOO_DIR / "shapes-vit.safetensors"))
    with pytest.raises(vitx.VitxError, match="is a DynamicViT twin"):
        vitx.load_model("shapes-vit-dynamicvit")


@pytest.mark.parametrize("method", ["dynamicvit", "evit-finetuned"])
def test_trained_twins_through_explain(model, x, method):
    exp = vitx.explain(model, x, method=method)
    assert exp.token_maps.shape == (4, 8, 8)
    counts = [len(k) for k in exp.details["kept"][0]]
    assert counts == [44, 31, 21] if method == "dynamicvit" else counts[0] == 45
    half = vitx.explain(model, x, method=method, keep_ratio=0.5)
    assert len(half.details["kept"][0][0]) == 32


def test_stages_are_drawn_and_saved_beside_the_overlay(model, x, tmp_path):
    """The papers' figure: the image, then per stage the dropped patches washed to grey; a kept patch keeps its
    pixels."""
    exp = vitx.explain(model, x[:2], method="evit")
    picture = exp.stages(0, scale=1)
    assert picture.size == (4 * 64 + 3 * 4, 64)
    pixels = torch.from_numpy(np.array(picture)).float()
    original = (exp.images[0].permute(1, 2, 0) * 255).round()
    last = pixels[:, 3 * 68:3 * 68 + 64]
    for patch in range(64):
        rows, cols = slice(patch // 8 * 8, patch // 8 * 8 + 8), slice(patch % 8 * 8, patch % 8 * 8 + 8)
        same = torch.allclose(last[rows, cols], original[rows, cols], atol=1)
        assert same == (patch in exp.details["kept"][0][-1])
    written = exp.save(tmp_path, names=["a", "b"])
    assert (tmp_path / "a_evit_stages.png").exists() and tmp_path / "b_evit_stages.png" in written
    with pytest.raises(vitx.VitxError, match="has none"):
        vitx.explain(model, x[:1], method="raw-attention").stages(0)


@pytest.mark.parametrize("name, method", [("shapes-vit-dynamicvit", "dynamicvit"), ("shapes-vit-evit", "evit-finetuned")])
def test_recipe_writes_a_twin_the_method_reads(tmp_path, model, x, monkeypatch, name, method):
    """A few steps of the twin recipes: the file records what it explains and its stages, the card its scores, and
    the method reads it for shapes-vit's weights."""
    from vitx.checkpoint import fingerprint, read_metadata
    from vitx.training import pruning as recipe
    from vitx.training.run import train
    (tmp_path / "shapes-vit.safetensors").symlink_to(vitx.zoo.ZOO_DIR / "shapes-vit.safetensors")
    monkeypatch.setattr(recipe, "TEST_IMAGES", 20)
    metrics = train(name, tmp_path, steps=2, batch_size=4, progress=False)
    assert set(metrics) == {"accuracy", "original_accuracy", "kept", "flops", "original_flops"}
    meta = read_metadata(tmp_path / f"{name}.safetensors")
    assert (meta["explains"], meta["stages"], meta["ratio"]) == ("shapes-vit", [1, 3, 4], 0.7)
    assert meta["fingerprints"] == [fingerprint(model.net)]
    assert "fewer" in (tmp_path / f"{name}.md").read_text()
    exp = vitx.explain(model, x[:2], method, module=str(tmp_path / f"{name}.safetensors"))
    assert exp.token_maps.shape == (2, 8, 8)
