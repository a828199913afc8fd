"""X-Pruner read as an explanation: which units of the model (attention context channels, MLP neurons) each class
relies on, as the class-wise masks learned on the frozen model say (:mod:`vitx.pruning.xpruner`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ...batch import Batch
from ...checkpoint import read_metadata
from ...errors import VitxError
from ...pruning.xpruner import token_relevance, unit_forward, unit_table
from ...registry import register
from ...trained import module_path
from .twins import load_pruned, module_checks, vitx_vit

YU_2023 = "Yu & Xiang, CVPR 2023, X-Pruner: eXplainable Pruning for Vision Transformers"


def _xpruner_shape(model, params: dict, path: Path) -> None:
    """vitx's own ViT of the module's depth and width."""
    net = vitx_vit(model, "x-pruner")
    meta = read_metadata(path)
    if len(meta["attn"]) != len(net.blocks):
        raise VitxError(f"X-Pruner module {path.name!r} has masks for {len(meta['attn'])} blocks, and this model has "
                        f"{len(net.blocks)}")


_requires, _fits = module_checks("xpruner", "x-pruner", "an X-Pruner module", _xpruner_shape)


@register("x-pruner", family="pruning", paper=YU_2023, needs={"trained_module", "gradients"},
          cost="1F + 1B (the model, its units weighted by the target's masks)", requires=_requires, fits=_fits,
          shows="a class-by-unit importance table (exp.details['units'], the figure <name>_x-pruner_units.png); "
                "the token map is vitx's addition")
def x_pruner(batch: Batch, module: str | None = None, allow_stale: bool = False) -> torch.Tensor:
    """X-Pruner: the explanation is the target class's row of the class-by-unit masks M = σ(Θ) learned on the frozen
    model (CE + sparsity + smoothness, each image run with its class's row), which the pruned twin was cut by.
    ``exp.details["units"]``: per image, ``{"attn": [per block, M over its heads x head_dim context channels],
    "mlp": [per block, M over its hidden neurons]}`` of the target; ``["unit_table"]``: the whole table (classes x
    units, every block's channels then neurons, one tensor shared by the images), drawn by ``exp.save`` as
    ``<name>_x-pruner_units.png``. The token map is vitx's addition: r_n = Σ_l Σ_u M_l[y, u] · a ∂z_y/∂a over every
    unit u at token n (:func:`vitx.pruning.xpruner.token_relevance`). ``module``: a zoo name or a file from
    ``vitx train`` (default: the zoo's, ``shapes-vit-xpruner`` for ``shapes-vit``), refused for other weights
    unless ``allow_stale``."""
    masks = load_pruned(module_path(batch.model.config, "xpruner", "x-pruner", module), batch.x.device).masks
    logits, ones = unit_forward(batch.model.net, batch.x)
    batch.record(logits)                                           # the model's own forward: no second one
    targets = batch.targets
    rows = unit_table(masks, targets)
    relevance = token_relevance(logits, ones, rows, targets)
    batch.details["units"] = [{"attn": a.tolist(), "mlp": m.tolist()} for a, m in zip(rows["attn"], rows["mlp"])]
    table = unit_table(masks)
    flat = torch.cat([table["attn"], table["mlp"]], -1).flatten(1).cpu()
    batch.details["unit_table"] = [flat] * len(targets)
    return batch.layout.to_grid(relevance[:, batch.model.net.num_prefix_tokens:])
