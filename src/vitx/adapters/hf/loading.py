"""``hf:<hub id or directory>``: a Hugging Face model loaded with the class its config records (an image
classifier, a vision tower, a detector or a region VQA model vitx reads, the latter with the tokenizer saved beside
it; an image-text model, CLIP or SigLIP, with its tokenizer), the hub's cache alone where the hub cannot be reached."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from torch import nn

from ...checkpoint import state_dict_error
from ...errors import VitxError
from ..hub import offline_reason
from .two_towers import IMAGE_TEXT


def load(source: str) -> tuple[nn.Module, dict]:
    """``from_pretrained`` on a hub id or a local directory with the class named by the config's
    ``architectures`` where that is an image classifier, or a vision tower, VQA model or detector vitx reads (a
    bare ``Dinov2Model`` stays bare: no random classifier is put on it), else ``AutoModelForImageClassification``."""
    try:
        import transformers
    except ImportError as err:
        raise VitxError(f"loading 'hf:{source}' needs transformers installed ({err})") from None
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise VitxError(f"'hf:{source}': no such model directory")
    reason = None if looks_local else offline_reason()
    model_class = _model_class(transformers, source, local_files_only=reason is not None)
    try:
        with _quiet_loading():
            net = model_class.from_pretrained(source, local_files_only=reason is not None)
    except Exception as err:  # hub, file and format errors all end here
        if reason:
            raise VitxError(f"Hugging Face model {source!r}: {reason} and the model is not in the local cache; pass "
                            "a local directory saved with save_pretrained: load_model('hf:DIR') or vitx explain "
                            "--model hf:DIR") from None
        raise VitxError(f"could not load Hugging Face model {source!r}: {state_dict_error(err)}") from None
    return net, {"name": f"hf:{source}", **_tokenizer(transformers, net, source, reason is not None)}


def _tokenizer(transformers, net: nn.Module, source: str, local_files_only: bool) -> dict:
    """{"tokenizer": the tokenizer saved with a VQA model (the only question answerers loaded here are the region
    models vitx reads) or an image-text model}, or {} (then its questions or prompts ask for one)."""
    if not type(net).__name__.endswith("ForQuestionAnswering") and type(net).__name__ not in IMAGE_TEXT:
        return {}
    try:
        with _quiet_loading():
            return {"tokenizer": transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)}
    except Exception:  # no tokenizer files: encode_text names what to pass
        return {}


def _model_class(transformers, source: str, local_files_only: bool):
    """The class to load ``source`` with; a VitxError where its config names a model that is neither an image
    classifier nor a vision tower vitx reads. A config that cannot be read leaves the error to the loader."""
    from . import ADAPTERS
    try:
        with _quiet_loading():
            architectures = transformers.AutoConfig.from_pretrained(source, local_files_only=local_files_only) \
                .architectures or []
    except Exception:  # no config: AutoModelForImageClassification reports it
        architectures = []
    for name in architectures:
        if (name in ADAPTERS or "ForImageClassification" in name) and hasattr(transformers, name):
            return getattr(transformers, name)
    if architectures:
        raise VitxError(f"Hugging Face model {source!r} is a {architectures[0]}, which vitx does not read: it reads "
                        "image classifiers (...ForImageClassification) and the vision towers "
                        f"{', '.join(name for name in ADAPTERS if 'For' not in name and name not in IMAGE_TEXT)}, "
                        f"the VQA models "
                        f"{', '.join(name for name in ADAPTERS if 'ForQuestion' in name)}, the image-text models "
                        f"{', '.join(IMAGE_TEXT)} and the detectors "
                        f"{', '.join(name for name in ADAPTERS if 'ForObjectDetection' in name)}")
    return transformers.AutoModelForImageClassification


@contextmanager
def _quiet_loading():
    """Hide transformers' weight-loading progress bar (the CLI prints one line per problem), then restore it."""
    from transformers.utils import logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
