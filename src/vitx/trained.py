"""Trained modules that explain a model (ViT Shapley's explainer, a pruning predictor, DiffMask's gates): each is a
safetensors file whose metadata names its ``kind``, the model it ``explains`` and the ``fingerprints`` of the
weights it was trained on (:func:`vitx.checkpoint.fingerprint`). A method finds its module in the zoo by the name
of the model it explains, or takes one given as a zoo name or a file, and refuses other weights."""
from __future__ import annotations

from pathlib import Path

from .checkpoint import fingerprint, read_metadata
from .errors import StaleModuleError, VitxError
from .zoo import NAMES, ZOO_DIR


def zoo_modules(kind: str) -> dict[str, Path]:
    """The zoo's modules of metadata ``kind`` by the name of the model each explains."""
    found = {}
    for name in NAMES:
        path = ZOO_DIR / f"{name}.safetensors"
        meta = read_metadata(path) if path.exists() else {}
        if meta.get("kind") == kind:
            found[meta["explains"]] = path
    return found


def module_path(config, kind: str, method: str, module: str | None = None, what: str = "a module") -> Path:
    """The file of ``method``'s trained ``kind`` module for a model: ``module`` (a zoo name or a file from
    ``vitx train``), or the zoo's module for the model's name. Refuses a file of another kind, or one trained for
    a model whose input normalisation or classes differ."""
    if module is None:
        found = zoo_modules(kind)
        if config.name not in found:
            have = ", ".join(found) or "none"
            raise VitxError(f"method {method!r} needs {what} trained for this model ({config.name or 'unnamed'}); "
                            f"the zoo has one for: {have}. Train one (`vitx train`) and pass {_param(what)}=<file>")
        return found[config.name]
    path = ZOO_DIR / f"{module}.safetensors" if module in NAMES else Path(module)
    if not path.is_file():
        raise VitxError(f"{_param(what)} {module!r} is neither a zoo name nor a file")
    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise VitxError(f"{str(path)!r} is not {what} of method {method!r} (it says kind {meta.get('kind')!r})")
    if meta["mean"] != list(config.mean) or meta["std"] != list(config.std) or \
            len(meta["class_names"]) != config.num_classes:
        raise VitxError(f"{what} {path.name!r} was trained for {meta['explains']!r}, whose input normalisation or "
                        "classes differ from this model's")
    return path


def check_fingerprint(path: Path, net, method: str, what: str = "module") -> None:
    """Refuse a model whose weights are not those the module at ``path`` was trained for (its metadata's
    ``fingerprints``); ``allow_stale=True`` is the method's way round, named in the message."""
    meta = read_metadata(path)
    known = meta.get("fingerprints")
    anyway = f"pass allow_stale=True (--param {method}.allow_stale=True)"
    if not known:
        raise StaleModuleError(f"{what} {path.name!r} records no fingerprint of the weights it explains, so it cannot "
                               f"tell whether it fits this model; retrain it with `vitx train`, or {anyway} to use it "
                               "anyway")
    if fingerprint(net) not in known:
        raise StaleModuleError(f"{what} {path.name!r} was trained for other weights of {meta['explains']!r} (this "
                               "model's weights differ, e.g. fine-tuned or randomised), so it would not explain this "
                               f"model; train one for it (`vitx train`), or {anyway} to explain with it anyway")


def _param(what: str) -> str:
    return what.split()[-1]
