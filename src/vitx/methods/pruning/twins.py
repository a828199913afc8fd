"""What the pruning methods share: loading a pruned twin from the zoo, refusing other weights than the ones it was
trained for, and reporting per-stage keep decisions as a survival map with its details."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ...batch import Batch
from ...checkpoint import read_checkpoint
from ...errors import VitxError
from ...models import ARCHITECTURES, VisionTransformer
from ...pruning.dynamicvit import DynamicViT
from ...pruning.evit import EViT
from ...pruning.iared2 import IARed2
from ...pruning.slimming import Slimmed
from ...pruning.xpruner import XPrunerTwin
from ...pruning.stages import Stage, kept_lists, survival_map
from ...registry import register
from ...trained import check_fingerprint, module_path



def _staged(module):
    """A twin whose metadata holds its ``stages`` and its keep ``ratio``."""
    return lambda vit, meta: module(vit, tuple(meta["stages"]), meta["ratio"])


# a pruned twin's metadata kind -> its module's layout from (the unpruned ViT, the metadata)
PRUNED = {"dynamicvit": _staged(DynamicViT), "evit": _staged(EViT), "iared2": _staged(IARed2),
          "slimming": _staged(Slimmed), "xpruner": XPrunerTwin.saved}
def load_pruned(path: Path, device) -> torch.nn.Module:
    """The pruned twin saved at ``path`` by ``vitx train`` (metadata: kind, arch, config and the layout of its kind)."""
    state, meta = read_checkpoint(path)
    vit = VisionTransformer(replace(ARCHITECTURES[meta["arch"]], **meta["config"]))
    net = PRUNED[meta["kind"]](vit, meta)
    net.load_state_dict(state)
    return net.eval().to(device)


def report(batch: Batch, logits: torch.Tensor, stages: list[Stage]) -> torch.Tensor:
    """The survival map of ``stages`` as a token map; the kept patches per stage, the stages' blocks and the pruned
    model's prediction per image go to ``exp.details``."""
    patches = batch.layout.num_patches
    record_stages(batch, logits, kept_lists(stages, patches), [s.block for s in stages])
    return batch.layout.to_grid(survival_map(stages, patches))


def record_stages(batch: Batch, logits: torch.Tensor, kept: list, blocks: list[int]) -> None:
    """``exp.details`` of a pruned model: ``kept`` (per image, the patches kept at each stage), ``stage_blocks``
    (the stages' ``blocks``) and ``pruned_prediction`` (from its ``logits``)."""
    batch.details["kept"] = kept
    batch.details["stage_blocks"] = [list(blocks) for _ in range(len(logits))]
    batch.details["pruned_prediction"] = logits.argmax(-1).tolist()


def vitx_vit(model, method: str) -> VisionTransformer:
    if not isinstance(model.net, VisionTransformer):
        raise VitxError(f"method {method!r} runs the blocks of vitx's own ViT, and this model is a "
                        f"{type(model.net).__name__}: load timm weights into it with vitx.load_model(file, arch=...)")
    return model.net


def module_checks(kind: str, method: str, what: str, also=None):
    """The ``requires`` and ``fits`` of a method that reads a trained module of metadata ``kind``: ``requires`` finds
    it (the zoo's for the model's name, or the ``module`` parameter); ``fits``, before any forward, runs
    ``also(model, params, path)`` and refuses other weights than the module's unless ``allow_stale``."""
    def requires(config, params: dict) -> None:
        module_path(config, kind, method, params.get("module"), what)

    def fits(model, params: dict) -> None:
        path = module_path(model.config, kind, method, params["module"], what)
        if also is not None:
            also(model, params, path)
        if not params["allow_stale"]:
            check_fingerprint(path, model.net, method)
    return requires, fits


def twin_method(name: str, kind: str, paper: str):
    """Register ``name``, a method read from the model's pruned twin of metadata ``kind`` (:func:`load_pruned`) at a
    keep ratio."""
    requires, fits = module_checks(kind, name, "a pruned twin module")
    return register(name, family="pruning", paper=paper, needs={"trained_module", "cls_token"},
                    cost="1F (the pruned twin)", requires=requires, fits=fits, ranges={"keep_ratio": "(0, 1]"})


def run_twin(batch: Batch, kind: str, method: str, module: str | None, *args) -> tuple[torch.Tensor, list[Stage]]:
    """The twin's logits and per-stage decisions on the batch's images (``args``: the twin's own, e.g. its ratio)."""
    net = load_pruned(module_path(batch.model.config, kind, method, module), batch.x.device)
    with torch.no_grad():
        return net(batch.x, *args)

