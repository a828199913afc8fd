"""Vision DiffMask read as an explanation: the frozen model's patches as its trained gates keep them."""
from __future__ import annotations

from pathlib import Path

import torch

from ...batch import Batch
from ...checkpoint import read_metadata
from ...errors import VitxError
from ...pruning.diffmask import load_gates, read
from ...registry import register
from ...trained import module_path
from .twins import module_checks, vitx_vit

NALMPANTIS_2023 = ("Nalmpantis et al., CVPR Workshops 2023, Vision DiffMask: Faithful Interpretation of Vision "
                   "Transformers with Differentiable Patch Masking")


def _diffmask_shape(model, params: dict, path: Path) -> None:
    """vitx's own ViT, of the module's width and depth."""
    net = vitx_vit(model, "diffmask")
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
