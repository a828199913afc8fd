"""``vitx.load_model``: zoo names, ``timm:<name>``, ``torchvision:<name>``, ``hf:<id or dir>``,
``open_clip:<arch>``, safetensors files, or a module."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from torch import nn

from .adapters.timm import preprocessing, pretrained_config
from .checkpoint import read_checkpoint, state_dict_error
from .errors import VitxError
from .model import Model, configured, wrap
from .models import ARCHITECTURES, create_model
from .zoo import NAMES as ZOO_NAMES, zoo_path


# sources named by a framework's model name, whose weights may come from a local file (``weights=``)
WITH_WEIGHTS_FILE = ("timm:", "torchvision:", "open_clip:")

NOT_CLASSIFIERS = {"shapley-explainer": "a ViT Shapley explainer (use it through the method 'vit-shapley')",
                   "generator": "an image generator (use it with `vitx generate`)",
                   "dynamicvit": "a DynamicViT twin (use it through the method 'dynamicvit')",
                   "evit": "an EViT twin (use it through the method 'evit-finetuned')",
                   "iared2": "an IA-RED² pruned twin (use it through the method 'ia-red2')",
                   "diffmask": "Vision DiffMask's gates (use them through the method 'diffmask')",
                   "slimming": "a Patch Slimming twin (use it through the method 'patch-slimming')",
                   "xpruner": "an X-Pruner twin and its class masks (use them through the method 'x-pruner')"}


def load_model(source, arch: str | None = None, *, weights: str | None = None, device=None, **config) -> Model:
    """Load or wrap a model.

    ``source``: a zoo name (``vitx.models()``), ``"timm:<name>"`` or ``"torchvision:<name>"`` (``weights=`` a
    local file instead of the hub or torchvision's download), ``"open_clip:<arch>"`` (an image-text model of
    open_clip's architecture ``arch``, its weights from the local file ``weights=``; its prompts read by open_clip's
    tokenizer), ``"hf:<hub id or local directory>"`` (an image-text model, CLIPModel or SiglipModel, with the
    tokenizer saved beside it), a
    ``.safetensors`` file with timm's keys (``arch`` names the timm configuration, e.g.
    ``"vit_small_patch16_224"``; vitx's own files carry theirs), or an ``nn.Module`` you already hold (wrapped, not copied). ``config`` overrides
    :class:`~vitx.model.ModelConfig` fields such as ``mean``, ``std`` or ``class_names``, and for files the
    architecture's own (``depth=3, embed_dim=64``...) where they differ from ``arch``'s.
    """
    if isinstance(source, Model):
        model = Model(source.net, source.adapter, configured(source.config, config)) if config else source
    elif isinstance(source, nn.Module):
        model = wrap(source, **config)
    elif isinstance(source, (str, Path)):
        model = _load_named(str(source), arch, weights, config)
    else:
        raise VitxError(f"cannot load a model from a {type(source).__name__}")
    return model.to(device) if device is not None else model


def _load_named(source: str, arch: str | None, weights: str | None, config: dict) -> Model:
    if weights is not None and not source.startswith(WITH_WEIGHTS_FILE):
        raise VitxError(f"weights= applies to 'timm:<name>', 'torchvision:<name>' and 'open_clip:<arch>' models "
                        f"only; {source!r} carries its own weights")
    if source.startswith("timm:"):
        from .adapters.timm import load
        net, facts = load(source[5:], weights)
    elif source.startswith("torchvision:"):
        from .adapters.torchvision import load
        net, facts = load(source[len("torchvision:"):], weights)
    elif source.startswith("open_clip:"):
        from .adapters.open_clip import load
        net, facts = load(source[len("open_clip:"):], weights)
    elif source.startswith("hf:"):
        from .adapters.hf import load
        net, facts = load(source[3:])
    elif source in ZOO_NAMES:
        net, facts = _load_file(zoo_path(source), arch, config)
        facts["name"] = source
    elif source.endswith(".safetensors") or Path(source).is_file():
        if not Path(source).is_file():
            raise VitxError(f"model file {source!r} does not exist")
        net, facts = _load_file(Path(source), arch, config)
    else:
        raise VitxError(f"unknown model {source!r}: use a zoo name ({', '.join(ZOO_NAMES)}), 'timm:<name>', "
                        "'torchvision:<name>', 'open_clip:<arch>', 'hf:<id or directory>' or a .safetensors file")
    return wrap(net.eval(), **{**facts, **config})


def _load_file(path: Path, arch: str | None, config: dict) -> tuple[nn.Module, dict]:
    """Build ``arch`` from the file's weights; the entries of ``config`` that name fields of the architecture's
    configuration (``depth``, ``embed_dim``, ``image_size``...) are taken out of ``config`` to build it."""
    state, meta = read_checkpoint(path)
    if meta.get("kind") in NOT_CLASSIFIERS:
        raise VitxError(f"{path.name!r} is {NOT_CLASSIFIERS[meta['kind']]}, not a classifier")
    arch = arch or meta.get("arch")
    if arch is None:
        raise VitxError(f"{str(path)!r} does not say its architecture: pass arch=, e.g. 'vit_small_patch16_224'")
    if arch not in ARCHITECTURES:
        raise VitxError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    arch_fields = {f.name for f in fields(ARCHITECTURES[arch])}
    overrides = {**meta.get("config", {}), **{k: config.pop(k) for k in list(config) if k in arch_fields}}
    if "head.weight" in state:
        overrides.setdefault("num_classes", state["head.weight"].shape[0])
    net = create_model(arch, **overrides)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise VitxError(f"{str(path)!r} does not fit architecture {arch!r}: {state_dict_error(err)}") from None
    # a file without vitx's metadata is taken for timm's weights of that name: timm's preprocessing for them
    num_classes = overrides.get("num_classes", getattr(ARCHITECTURES[arch], "num_classes", None))  # VQA: answers
    facts = {**preprocessing(pretrained_config(arch), num_classes),
             **{k: meta[k] for k in ("mean", "std", "class_names", "multi_label") if k in meta}}
    if meta.get("kind") == "clip":     # an image-text model's classes are the prompts it is given
        facts.pop("class_names", None)
    facts.setdefault("name", path.stem)
    return net, facts
