"""IA-RED² (vitx.pruning.iared2, the method ia-red2 and its zoo module shapes-vit-iared2): REINFORCE on a hand-built
two-action toy, the interpreter and its hard policy, the pruned forward against the masked one, the method through
vitx.explain with its refusals, and the quality and efficiency gates of issue 16 on fresh images."""
import math

import pytest
import torch

import vitx
from vitx.checkpoint import fingerprint, read_metadata
from vitx.data import shapes
from vitx.errors import StaleModuleError, VitxError
from vitx.methods.pruning.twins import load_pruned
from vitx.models import create_model
from vitx.pruning.iared2 import THRESHOLD, IARed2, Interpreter, kept_share, log_policy, reinforce_loss, reward
from vitx.training import iared2 as iared2_recipe
from vitx.training import train
from vitx.training.iared2 import IARed2Trainer
from vitx.training.recipes import RECIPES
from vitx.zoo import ZOO_DIR


# --- REINFORCE on a two-action toy -------------------------------------------------------------------------------

def _toy_gradient(theta: float, action: int, rewards: tuple[float, float], baseline: float = 0.0) -> float:
    """d/dθ of the REINFORCE loss for one Bernoulli decision u ~ σ(θ) (keep = 1), taken ``action``."""
    logit = torch.tensor(theta, requires_grad=True)
    p = torch.stack([torch.ones(()), logit.sigmoid()]).view(1, 1, 2)   # (groups, images, tokens): class, patch
    decision = torch.tensor([1.0, float(action)]).view(1, 1, 2)
    loss = reinforce_loss(log_policy(p, decision, torch.ones(1, 1, 2)), torch.tensor([rewards[action]]),
                          torch.tensor([baseline]))
    loss.backward()
    return logit.grad.item()


def test_reinforce_gradient_by_hand_on_a_two_action_toy():
    """One patch, keep with probability p = σ(θ): d(−R log π(u))/dθ = −R (1 − p) when kept, +R p when dropped."""
    p = 1 / (1 + math.exp(-0.3))
    assert _toy_gradient(0.3, 1, (0.0, 2.0)) == pytest.approx(-2.0 * (1 - p))
    assert _toy_gradient(0.3, 0, (0.5, 0.0)) == pytest.approx(0.5 * p)
    assert _toy_gradient(0.3, 1, (0.0, 2.0), baseline=2.0) == pytest.approx(0.0)   # no advantage, no step


@pytest.mark.parametrize("better, sign", [(1, -1), (0, 1)])
def test_reinforce_descends_towards_the_better_action(better, sign):
    """Averaged over sampled actions, gradient descent raises the probability of the better-rewarded action:
    dE[loss]/dθ = −p(1 − p)(R₁ − R₀), negative when keeping pays more, positive when dropping does."""
    rewards = (0.0, 1.0) if better == 1 else (1.0, 0.0)
    theta, p = 0.4, 1 / (1 + math.exp(-0.4))
    gen = torch.Generator().manual_seed(0)
    actions = (torch.rand(4000, generator=gen) < p).long().tolist()
    mean = sum(_toy_gradient(theta, a, rewards, baseline=0.5) for a in actions) / len(actions)
    assert math.copysign(1, mean) == sign
    assert mean == pytest.approx(-p * (1 - p) * (rewards[1] - rewards[0]), abs=0.02)


def test_reward_and_kept_share_by_hand():
    """Groups of 1 and 2 blocks, 4 patches: s = (1/3)·(3/4) + (2/3)·(1/4) = 5/12; R = 1 − s² if right, −τ if wrong."""
    kept = torch.tensor([[[1, 1, 1, 0, 1.0]], [[1, 0, 1, 0, 0.0]]])     # (groups, images, class + 4 patches)
    share = kept_share(kept, (1, 2))
    assert share.item() == pytest.approx(5 / 12)
    got = reward(torch.tensor([True, False]), share.repeat(2), tau=3.0)
    assert got.tolist() == pytest.approx([1 - (5 / 12) ** 2, -3.0])


def test_log_policy_counts_only_the_alive_patch_decisions():
    probs = torch.tensor([[[0.9, 0.8, 0.3, 0.6]]])
    decisions = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    alive = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])              # the last token was dropped before: no decision
    assert log_policy(probs, decisions, alive).item() == pytest.approx(math.log(0.8) + math.log(0.7))


# --- the interpreter and the hard policy -------------------------------------------------------------------------

def test_interpreter_is_the_mean_over_heads_of_sigmoid_class_attention():
    torch.manual_seed(0)
    interp = Interpreter(8, 2)
    torch.nn.init.normal_(interp.qk.weight)
    x, alive = torch.randn(3, 5, 8), torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 1, 0, 1.0]])
    p = interp(x, alive)
    assert p.shape == (3, 5)
    h = torch.nn.functional.layer_norm(x * alive[..., None], (8,))
    q, k = interp.qk(h).split(8, -1)
    by_hand = torch.stack([(q[:, :1, i:i + 4] @ k[:, :, i:i + 4].transpose(1, 2) / 2).sigmoid()[:, 0]
                           for i in (0, 4)]).mean(0) * alive
    torch.testing.assert_close(p, by_hand)
    assert (p[alive == 0] == 0).all()


@pytest.fixture(scope="module")
def toy():
    """A random vitx_shapes ViT with IA-RED² interpreters whose weights make the policy drop about half."""
    torch.manual_seed(0)
    net = IARed2(create_model("vitx_shapes").eval(), (0, 2, 4)).eval()
    for interp in net.interpreters:
        torch.nn.init.normal_(interp.qk.weight, std=0.3)
        torch.nn.init.zeros_(interp.qk.bias)
    return net, torch.randn(6, 3, 64, 64)


def test_hard_policy_keeps_the_class_token_and_never_revives_a_token(toy):
    net, x = toy
    with torch.no_grad():
        for sample in (True, False):
            r = net.rollout(x, sample=sample)
            assert r.kept.shape == r.probs.shape == (3, 6, 65)
            assert (r.kept[:, :, 0] == 1).all()
            assert (r.kept <= r.alive).all() and (r.alive[1:] == r.kept[:-1]).all()
        greedy = net.rollout(x, sample=False)
        torch.testing.assert_close(greedy.kept[:, :, 1:], ((greedy.probs > THRESHOLD).float() * greedy.alive)[:, :, 1:])
        assert 0.1 < greedy.kept[-1, :, 1:].mean() < 0.9


def test_pruned_inference_runs_on_the_kept_tokens_as_the_masked_pass_does(toy):
    """Images keep different counts; gathered to the batch's largest and padded through the policy, the pruned
    forward gives the masked pass's logits and decisions."""
    net, x = toy
    with torch.no_grad():
        masked = net.rollout(x, sample=False)
        logits, stages = net(x)
    torch.testing.assert_close(logits, masked.logits, atol=2e-3, rtol=0)
    counts = masked.kept[:, :, 1:].sum(-1)
    assert len(set(counts[-1].tolist())) > 1                  # the images do keep different counts
    for g, stage in enumerate(stages):
        assert stage.block == 2 * g
        kept = torch.zeros(6, 65)
        kept.scatter_(1, stage.kept, 1.0)                     # index 64 (padding) lands in the last column
        assert (kept[:, :64] == masked.kept[g, :, 1:]).all()


def test_prefix_tokens_always_stay_and_are_no_patches():
    """With a distillation token and two registers (4 prefix tokens), the prefix stays, the patch indices count from
    the first patch, and the pruned forward still gives the masked pass's logits."""
    torch.manual_seed(0)
    net = IARed2(create_model("vitx_shapes", distilled=True, reg_tokens=2).eval(), (0, 3)).eval()
    for interp in net.interpreters:
        torch.nn.init.normal_(interp.qk.weight, std=0.3)
        torch.nn.init.zeros_(interp.qk.bias)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        masked = net.rollout(x, sample=False)
        logits, stages = net(x)
    assert net.prefix == 4 and (masked.kept[:, :, :4] == 1).all() and masked.kept[:, :, 4:].mean() < 0.9
    torch.testing.assert_close(logits, masked.logits, atol=2e-3, rtol=0)
    for g, stage in enumerate(stages):
        kept = torch.zeros(3, 65).scatter_(1, stage.kept, 1.0)
        assert (kept[:, :64] == masked.kept[g, :, 4:]).all()


def test_stages_must_start_at_the_first_block_and_exist():
    vit = create_model("vitx_shapes")
    assert IARed2(vit, (0, 1, 5)).groups == (1, 4, 1)
    for stages in ((1, 3), (0, 2, 2), (0, 6), (0, 4, 2), ()):
        with pytest.raises(VitxError, match="stages must be increasing blocks from 0 .* within the model's 6"):
            IARed2(vit, stages)
    with pytest.raises(VitxError, match="IA-RED² has no keep ratio"):
        IARed2(vit, (0, 2, 4), 0.7)


# --- the method ia-red2 and the zoo's twin ------------------------------------------------------------------------

SEED = 20_000


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def twin():
    return load_pruned(ZOO_DIR / "shapes-vit-iared2.safetensors", "cpu")


def test_ia_red2_through_explain_maps_the_interpreters_keep_probabilities(model, twin):
    data = shapes(n=5, seed=40_000)
    x = model.normalize(data.images)
    exp = vitx.explain(model, x, "ia-red2", normalize=False)
    survival = vitx.explain(model, x, "ia-red2", group=None, normalize=False)
    assert exp.token_maps.shape == survival.token_maps.shape == (5, 8, 8)
    with torch.no_grad():
        first = twin.interpreters[0](twin.vit.embed(x), torch.ones(5, 65))[:, 1:]
    torch.testing.assert_close(exp.token_maps.flatten(1), first)       # group 0 scores every patch
    kept = exp.details["kept"]
    assert kept == survival.details["kept"] and len(kept) == 5 and all(len(groups) == 3 for groups in kept)
    for values, probs, groups in zip(survival.token_maps.flatten(1), first, kept):
        assert all(set(later) <= set(earlier) for earlier, later in zip(groups, groups[1:]))
        assert groups[0] == (probs > THRESHOLD).nonzero().flatten().tolist()
        survivors = torch.zeros(64, dtype=torch.bool)
        survivors[groups[-1]] = True
        assert 0 < survivors.sum() < 64
        assert values[survivors].min() > 3.5 > values[~survivors].max()   # 3 groups + p > 0.5, against ≤ g + 0.5
    alone = [vitx.explain(model, x[i:i + 1], "ia-red2", group=None, normalize=False) for i in range(5)]
    torch.testing.assert_close(torch.cat([e.token_maps for e in alone]), survival.token_maps, atol=1e-5, rtol=0)
    assert [e.details["kept"][0] for e in alone] == kept                # padding the batch changes nothing


def test_ia_red2_refuses_other_weights_and_modules(model, tmp_path):
    x = model.normalize(shapes(n=2, seed=40_001).images)
    random_vit = vitx.load_model(create_model("vitx_shapes"), class_names=model.config.class_names,
                                 mean=model.config.mean, std=model.config.std)
    with pytest.raises(VitxError, match="needs an IA-RED² module trained for this model"):
        vitx.explain(random_vit, x, "ia-red2")
    with pytest.raises(StaleModuleError, match="trained for other weights of 'shapes-vit'"):
        vitx.explain(random_vit, x, "ia-red2", module="shapes-vit-iared2")
    with pytest.raises(VitxError, match="neither a zoo name nor a file"):
        vitx.explain(model, x, "ia-red2", module=str(tmp_path / "missing.safetensors"))
    with pytest.raises(VitxError, match="is not an IA-RED² module of method 'ia-red2'"):
        vitx.explain(model, x, "ia-red2", module="shapes-vit-shapley")
    with pytest.raises(VitxError, match="IA-RED² pruned twin"):
        vitx.load_model("shapes-vit-iared2")
    with pytest.raises(VitxError, match="group 3 does not exist; the twin has 3 groups"):
        vitx.explain(model, x, "ia-red2", group=3)
    with pytest.raises(VitxError, match="'group' must be in"):
        vitx.explain(model, x, "ia-red2", group=-1)


def test_pruned_twin_keeps_accuracy_with_fewer_flops(twin):
    """Within 1 point of shapes-vit's accuracy on the same 1,000 fresh images, with at least 30% fewer FLOPs (batch 1,
    the mean over 100 images: IA-RED² keeps a different count for each image), as the recipe scores its twin."""
    job = IARed2Trainer(RECIPES["shapes-vit-iared2"], ZOO_DIR, steps=1)
    job.net.load_state_dict(twin.state_dict())
    m = job.score(SEED)
    assert m["accuracy"] >= m["original_accuracy"] - 0.01, m
    assert 1 - m["flops_ratio"] >= 0.30, m


# The keep maps' quality gates (group 0 and the survival map) are in tests/test_pruning_quality.py, beside the other
# pruning methods' on the same images.


# --- the recipe ---------------------------------------------------------------------------------------------------

def test_recipe_trains_the_interpreters_then_the_backbone():
    """Steps before the switch (60%) give gradients to the interpreters only, the later ones to the backbone only."""
    torch.manual_seed(0)
    job = IARed2Trainer(RECIPES["shapes-vit-iared2"], ZOO_DIR, steps=5)
    assert job.switch == 3
    data = shapes(n=4, seed=1_000_000)
    for step, interpreting in ((0, True), (3, False)):
        job.step = step
        job.net.zero_grad(set_to_none=True)
        job.loss(data).backward()
        grads = {name: p.grad for name, p in job.net.named_parameters()}
        assert all((g is not None) == (name.startswith("interpreters.") == interpreting) for name, g in grads.items())
        assert any(g.abs().sum() > 0 for g in grads.values() if g is not None)


def test_recipe_writes_a_module_the_method_reads(tmp_path, model, monkeypatch):
    (tmp_path / "shapes-vit.safetensors").symlink_to(ZOO_DIR / "shapes-vit.safetensors")
    monkeypatch.setattr(iared2_recipe, "TEST_IMAGES", 20)
    monkeypatch.setattr(iared2_recipe, "FLOP_IMAGES", 2)
    metrics = train("shapes-vit-iared2", tmp_path, steps=3, batch_size=4, progress=False)
    assert set(metrics) >= {"accuracy", "original_accuracy", "keep_share", "flops", "original_flops", "flops_ratio"}
    path = tmp_path / "shapes-vit-iared2.safetensors"
    meta = read_metadata(path)
    assert (meta["kind"], meta["explains"], meta["stages"], meta["ratio"]) == ("iared2", "shapes-vit", [0, 2, 4], None)
    assert meta["fingerprints"] == [fingerprint(model.net)]
    assert "REINFORCE" in (tmp_path / "shapes-vit-iared2.md").read_text()
    x = model.normalize(shapes(n=2, seed=40_002).images)
    assert vitx.explain(model, x, "ia-red2", module=str(path)).token_maps.shape == (2, 8, 8)
