"""Every family of the catalog (tests/families.py) through the tap: logits unchanged with it open, nothing
left behind after it (also after an exception inside it), the attention methods equal to their formulas on
attention captured without vitx, and the support table in docs/models.md current (every method either
works, with finite maps on two images, or is refused before the model runs)."""
import pytest
import torch

import vitx
from families import catalog
from reference import check_formulas, close, snapshot
from support_table import cells, committed, markdown

FAMILIES = catalog()


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request):
    """(family, its small net, two images)."""
    fam = request.param
    x = torch.randn(2, 3, *fam.size, generator=torch.Generator().manual_seed(1))
    return fam, fam.build(), x


def test_logits_unchanged_with_the_tap_open(family):
    _, net, x = family
    model = vitx.load_model(net)
    with torch.no_grad():
        expected = model(x)
        with vitx.trace(model) as tr:
            traced = model(x)
    close(traced, expected, rtol=1e-5)
    assert len(tr.attentions) == len(tr.tokens) == len(model.adapter.blocks()) > 0


def test_nothing_left_behind(family):
    _, net, x = family
    before = snapshot(net)
    with vitx.trace(net, inputs=True, projected_values=False) as tr:
        vitx.load_model(net)(x)
    assert snapshot(net) == before
    with pytest.raises(RuntimeError, match="inside the tap"):
        with vitx.trace(net):
            vitx.load_model(net)(x)
            raise RuntimeError("inside the tap")
    assert snapshot(net) == before and tr.attentions


@pytest.mark.parametrize("fam", [f for f in FAMILIES if f.attentions], ids=lambda f: f.name)
def test_attention_methods_equal_their_formulas(fam):
    """Where the head reads the class token or the mean of the patch tokens (the families whose catalog entry
    captures attention)."""
    net, x = fam.build(), torch.randn(2, 3, *fam.size, generator=torch.Generator().manual_seed(1))
    model = vitx.load_model(net)
    layout = model.layout(x)
    check_formulas(net, x, *fam.attentions(net, x), layout.num_prefix, layout.grid, model.config.pooling)


def test_support_table_is_current():
    """Every method on every family works or is refused before running, and docs/models.md says so
    (``python tests/support_table.py`` rewrites it)."""
    table = cells(FAMILIES)
    failures = [f"{family} × {method}: {c.reason}" for family, row in table.items() for method, c in row.items()
                if c.status == "fails"]
    assert not failures, "\n".join(failures)
    assert markdown(table) == committed(), "docs/models.md is stale: run python tests/support_table.py"
