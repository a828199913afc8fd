"""Token-pruning methods read as explanations (:mod:`vitx.pruning`): the map of a patch is how long the pruned model
kept it, ``exp.details["kept"]`` the patches kept at each stage. What each explains: ``evit`` the model itself as
it is (no training), ``dynamicvit``, ``evit-finetuned`` and ``ia-red2`` their pruned twin fine-tuned from the
model (a zoo module trained for its very weights), whose keep decisions do not depend on the target class."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..batch import Batch
from ..checkpoint import read_checkpoint, read_metadata
from ..errors import VitxError
from ..models import ARCHITECTURES, VisionTransformer
from ..pruning.blocks import parse_stages
from ..pruning.diffmask import load_gates, read
from ..pruning.dynamicvit import DynamicViT
from ..pruning.evit import EViT
from ..pruning.iared2 import IARed2, interpreter_map
from ..pruning.stages import Stage, kept_lists, survival_map
from ..registry import register
from ..trained import check_fingerprint, module_path

RAO_2021 = "Rao et al., NeurIPS 2021, DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification"
LIANG_2022 = ("Liang et al., ICLR 2022, Not All Patches are What You Need: Expediting Vision Transformers via Token "
              "Reorganizations")
PAN_2021 = "Pan et al., NeurIPS 2021, IA-RED²: Interpretability-Aware Redundancy Reduction for Vision Transformers"
PRUNED = {"dynamicvit": DynamicViT, "evit": EViT, "iared2": IARed2}   # a pruned twin's metadata kind -> its module


def load_pruned(path: Path, device) -> torch.nn.Module:
    """The pruned twin saved at ``path`` by ``vitx train`` (metadata: kind, arch, config, stages, ratio)."""
    state, meta = read_checkpoint(path)
    vit = VisionTransformer(replace(ARCHITECTURES[meta["arch"]], **meta["config"]))
    net = PRUNED[meta["kind"]](vit, tuple(meta["stages"]), meta["ratio"])
    net.load_state_dict(state)
    return net.eval().to(device)


def report(batch: Batch, logits: torch.Tensor, stages: list[Stage]) -> torch.Tensor:
    """The survival map of ``stages`` as a token map; the kept patches per stage, the stages' blocks and the pruned
    model's prediction per image go to ``exp.details``."""
    patches = batch.layout.num_patches
    batch.details["kept"] = kept_lists(stages, patches)
    batch.details["stage_blocks"] = [[s.block for s in stages] for _ in range(len(logits))]
    batch.details["pruned_prediction"] = logits.argmax(-1).tolist()
    return batch.layout.to_grid(survival_map(stages, patches))


def _vitx_vit(model, method: str) -> VisionTransformer:
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
    parse_stages(params["stages"], len(_vitx_vit(model, "evit").blocks))
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


NALMPANTIS_2023 = ("Nalmpantis et al., CVPR Workshops 2023, Vision DiffMask: Faithful Interpretation of Vision "
                   "Transformers with Differentiable Patch Masking")


def _diffmask_shape(model, params: dict, path: Path) -> None:
    """vitx's own ViT, of the module's width and depth."""
    net = _vitx_vit(model, "diffmask")
    meta = read_metadata(path)
    if (meta["dim"], meta["depth"]) != (net.cfg.embed_dim, len(net.blocks)):
        raise VitxError(f"DiffMask module {path.name!r} has gates for {meta['depth']} blocks of width {meta['dim']}, "
                        f"and this model has {len(net.blocks)} blocks of width {net.cfg.embed_dim}")


_diffmask_requires, _diffmask_fits = module_checks("diffmask", "diffmask", "a DiffMask module", _diffmask_shape)


@register("diffmask", family="pruning", paper=NALMPANTIS_2023, needs={"trained_module"},
          cost="1F (the model, keeping the hidden states its gates read)", requires=_diffmask_requires,
          fits=_diffmask_fits)
def diffmask(batch: Batch, module: str | None = None, allow_stale: bool = False) -> torch.Tensor:
    """Vision DiffMask: each patch's probability of being kept, Π_i P(z_i ≠ 0) over the hard-concrete gates that
    read the frozen model's hidden states at every layer (:mod:`vitx.pruning.diffmask`), trained so that the
    patches kept hold the prediction within ε of KL. It explains the predicted class whatever the target (the
    gates have none). ``exp.details["layer_gates"]``: per image, each layer's P(z_i ≠ 0) per patch (h_0 first);
    ``["kept"]``: per image and layer i, the patches that the gates up to i keep with probability over one half
    (nested, as a pruned ViT's stages; the last is the map's). ``module``: a zoo name or a file from
    ``vitx train`` (default: the zoo's, ``shapes-vit-diffmask`` for ``shapes-vit``), refused for other weights
    unless ``allow_stale``."""
    gates = load_gates(module_path(batch.model.config, "diffmask", "diffmask", module), batch.x.device)
    with torch.no_grad():
        reading = read(batch.model.net, batch.x)
        layers = gates.keep_probabilities(reading)
    batch.record(reading.logits)                                   # the model's own forward: no second one
    batch.details["layer_gates"] = layers.transpose(1, 2).tolist()
    survival = layers.cumprod(-1).transpose(1, 2)                  # (B, L + 2, P): kept by every gate up to i
    batch.details["kept"] = [[torch.nonzero(row > 0.5).flatten().tolist() for row in image] for image in survival]
    return batch.layout.to_grid(survival[:, -1])
