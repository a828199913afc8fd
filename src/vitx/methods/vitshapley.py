"""ViT Shapley (Covert, Kim & Lee, ICLR 2023): Shapley values of the patches, amortised into one forward pass
of a trained explainer (a zoo entry, ``vitx train shapes-vit-shapley``).

The game is the surrogate's (:mod:`vitx.surrogate`): v_y(S) = softmax(g(x_S))_y with the patches outside S
removed by attention masking, g the classifier fine-tuned to predict with patches held out. The explainer
φ(x; θ) ∈ R^{P×C} was trained to minimise E_x E_{S∼p} Σ_y (v_y(S) − v_y(∅) − 1_Sᵀ φ_y(x))², S drawn from
the Shapley kernel, whose minimiser is the Shapley value; its output is made efficient by
φ_i + (v(N) − v(∅) − Σ_j φ_j)/P.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..batch import Batch
from ..checkpoint import read_checkpoint
from ..loading import load_model
from ..model import Model
from ..models import ARCHITECTURES
from ..models.shapley import ShapleyExplainer
from ..registry import register
from ..shapley import efficient_normalization
from ..surrogate import coalition_probabilities
from ..trained import check_fingerprint, module_path

COVERT_2023 = "Covert, Kim & Lee, ICLR 2023, Learning to Estimate Shapley Values with Vision Transformers"
KIND = "shapley-explainer"


def explainer_path(config, explainer: str | None) -> Path:
    """The explainer file for a model: ``explainer`` (a zoo name or a file from ``vitx train``), or the zoo's
    explainer for the model's name."""
    return module_path(config, KIND, "vit-shapley", explainer, what="an explainer")


def load_explainer(path: Path, device) -> tuple[ShapleyExplainer, Model]:
    """The explainer network in ``path`` and its surrogate (the file its metadata names, beside it)."""
    state, meta = read_checkpoint(path)
    net = ShapleyExplainer(replace(ARCHITECTURES[meta["arch"]], **meta["config"]), meta["extra_blocks"],
                           meta["mlp_layers"])
    net.load_state_dict(state)
    surrogate = load_model(str(path.parent / f"{meta['surrogate']}.safetensors"), device=device)
    return net.eval().to(device), surrogate


@torch.no_grad()
def grand_and_null(surrogate: Model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v(N) and v(∅) for every class, each (B, C): the surrogate on the whole image and with every patch held out."""
    none = torch.zeros(1, x.shape[0], surrogate.layout(x).num_patches, dtype=torch.bool, device=x.device)
    return surrogate(x).softmax(-1), coalition_probabilities(surrogate, x, none)[0]


@torch.no_grad()
def amortised_values(explainer: ShapleyExplainer, surrogate: Model, x: torch.Tensor) -> torch.Tensor:
    """(B, P, C) efficient ViT Shapley values of ``x``: one explainer forward and the surrogate's v(N), v(∅)."""
    return efficient_normalization(explainer(x), *grand_and_null(surrogate, x))


def _requires(config, params: dict) -> None:
    explainer_path(config, params.get("explainer"))


def _fits(model, params: dict) -> None:
    """Before any forward: the explainer was trained for these very weights, unless ``allow_stale``."""
    if not params["allow_stale"]:
        check_fingerprint(explainer_path(model.config, params["explainer"]), model.net, "vit-shapley", "explainer")


@register("vit-shapley", family="perturbation", paper=COVERT_2023, needs={"trained_module", "cls_token"},
          cost="1 explainer F + 2F (surrogate)", requires=_requires, fits=_fits)
def vit_shapley(batch: Batch, explainer: str | None = None, allow_stale: bool = False) -> torch.Tensor:
    """ViT Shapley: φ_i(x, t) for each patch i, from a trained explainer in one pass, efficient by construction
    (Σ_i φ_i = v_t(N) − v_t(∅), v the surrogate's probability of the target with patches held out by attention
    masking). ``explainer``: a zoo name or a file from ``vitx train``; default: the zoo's explainer for the
    model (``shapes-vit-shapley`` for ``shapes-vit``). The explainer refuses a model whose weights differ
    from those it was trained for (a fingerprint of them is in its metadata); ``allow_stale=True`` uses it
    anyway, knowingly."""
    net, surrogate = load_explainer(explainer_path(batch.model.config, explainer), batch.x.device)
    phi = amortised_values(net, surrogate, batch.x)
    return batch.layout.to_grid(phi[torch.arange(len(phi), device=phi.device), :, batch.targets])
