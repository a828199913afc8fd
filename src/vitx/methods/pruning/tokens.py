"""Token-pruning methods read as explanations: the map of a patch is how long the pruned model kept it,
``exp.details["kept"]`` the patches kept at each stage. What each explains: ``evit`` the model itself as it is (no
training), ``dynamicvit``, ``evit-finetuned`` and ``ia-red2`` their pruned twin fine-tuned from the model (a zoo
module trained for its very weights), whose keep decisions do not depend on the target class."""
from __future__ import annotations

from pathlib import Path

import torch

from ...batch import Batch
from ...checkpoint import read_metadata
from ...errors import VitxError
from ...pruning.blocks import parse_stages
from ...pruning.evit import EViT
from ...pruning.iared2 import interpreter_map
from ...registry import register
from .twins import module_checks, report, run_twin, twin_method, vitx_vit

RAO_2021 = "Rao et al., NeurIPS 2021, DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification"
LIANG_2022 = ("Liang et al., ICLR 2022, Not All Patches are What You Need: Expediting Vision Transformers via Token "
              "Reorganizations")
PAN_2021 = "Pan et al., NeurIPS 2021, IA-RED²: Interpretability-Aware Redundancy Reduction for Vision Transformers"


@twin_method("dynamicvit", "dynamicvit", RAO_2021)
def dynamicvit(batch: Batch, keep_ratio: float | None = None, module: str | None = None,
               allow_stale: bool = False) -> torch.Tensor:
    """DynamicViT: how long the model's pruned twin keeps each patch. Its prediction modules score the tokens before
    each stage s and keep the top ⌊P ρ^s⌋; a patch's value is the number of stages it survived plus its keep
    probability at the last stage that scored it (:mod:`vitx.pruning.stages`). ``keep_ratio`` ρ (default: the
    trained one); ``module``: a zoo name or a file from ``vitx train`` (default: the zoo's twin of the model,
    ``shapes-vit-dynamicvit`` for ``shapes-vit``), refused for other weights unless ``allow_stale``."""
    return report(batch, *run_twin(batch, "dynamicvit", "dynamicvit", module, keep_ratio))


def _evit_fits(model, params: dict) -> None:
    parse_stages(params["stages"], len(vitx_vit(model, "evit").blocks))
    if params["keep_ratio"] == 1:
        raise VitxError("method 'evit': keep_ratio 1 keeps every token, so EViT prunes nothing and has no map")


@register("evit", family="pruning", paper=LIANG_2022, needs={"cls_token"}, cost="1F (the model, reorganised)",
          fits=_evit_fits, ranges={"keep_ratio": "(0, 1]"})
def evit(batch: Batch, keep_ratio: float = 0.7, stages: str | None = None, fuse: bool = True) -> torch.Tensor:
    """EViT on the model as it is: inside each block of ``stages`` ("1,3,4"; default ⌊D/4⌋, ⌊D/2⌋, ⌊3D/4⌋ of D
    blocks) the ⌈ρ(N − 1)⌉ tokens the class token attends to most stay and the rest are fused into one token weighted
    by their class attention. A patch's value: stages survived plus its class attention at the last stage that
    ranked it. The model's weights are untouched; ``exp.details["pruned_prediction"]`` is its prediction pruned."""
    vit = batch.model.net
    net = EViT(vit, parse_stages(stages, len(vit.blocks)), keep_ratio, fuse)
    with torch.no_grad():
        logits, found = net(batch.x)
    return report(batch, logits, found)


@twin_method("evit-finetuned", "evit", LIANG_2022)
def evit_finetuned(batch: Batch, keep_ratio: float | None = None, module: str | None = None,
                   allow_stale: bool = False) -> torch.Tensor:
    """EViT fine-tuned: the map of ``evit``, read from the model's twin fine-tuned with EViT's keep-rate schedule
    (default: the zoo's, ``shapes-vit-evit`` for ``shapes-vit``; refused for other weights unless ``allow_stale``).
    ``keep_ratio`` ρ defaults to the one it was fine-tuned for."""
    return report(batch, *run_twin(batch, "evit", "evit-finetuned", module, keep_ratio))


def _iared2_group(model, params: dict, path: Path) -> None:
    groups = len(read_metadata(path)["stages"])
    if params["group"] is not None and params["group"] >= groups:
        raise VitxError(f"method 'ia-red2': group {params['group']} does not exist; the twin has {groups} groups "
                        f"(0..{groups - 1}), or None for the survival map")


_iared2_requires, _iared2_fits = module_checks("iared2", "ia-red2", "an IA-RED² module", _iared2_group)


@register("ia-red2", family="pruning", paper=PAN_2021, needs={"trained_module", "cls_token"},
          cost="1F (the pruned twin)", requires=_iared2_requires, fits=_iared2_fits, ranges={"group": "[0, inf)"})
def ia_red2(batch: Batch, group: int | None = 0, module: str | None = None, allow_stale: bool = False) -> torch.Tensor:
    """IA-RED²: the keep probabilities of the model's pruned twin. Before each group of blocks a multi-head
    interpreter gives every live token p_j = mean_h σ(q_cls^h·k_j^h/√d) and the tokens with p_j ≤ 0.5 leave for good
    (:mod:`vitx.pruning.iared2`). The map: interpreter ``group``'s p (0 for patches dropped before it; default the
    first, which scores every patch), as the authors' interpretation tool draws it; ``group=None``: the survival map
    of the other pruning methods (groups survived + p at the last group that scored the patch).
    ``exp.details["kept"]``: the patches kept at each group. ``module``: a zoo name or a file from ``vitx train``
    (default: the zoo's twin, ``shapes-vit-iared2`` for ``shapes-vit``), refused for other weights unless
    ``allow_stale``."""
    logits, stages = run_twin(batch, "iared2", "ia-red2", module)
    survival = report(batch, logits, stages)
    return survival if group is None else batch.layout.to_grid(interpreter_map(stages[group], batch.layout.num_patches))

