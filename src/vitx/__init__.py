"""vitx: explain the predictions of Vision Transformers.

Every method of the field behind one call, on any ViT (vitx's own, timm, Hugging Face), batched,
and scored on data whose ground truth is known. See DESIGN.md for the public face.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import data, methods as _methods  # noqa: F401  (importing methods fills the registry)
from .errors import VitxError
from .evaluate import evaluate
from .explain import explain
from .explanation import Explanation
from .loading import load_model
from .model import Model, ModelConfig
from .registry import get_method, methods, register
from .trace import Trace, trace
from .zoo import models

try:
    __version__ = _version("vitx")  # the installed package's metadata (pyproject.toml's version)
except PackageNotFoundError:  # source tree on the path without an installation
    __version__ = "0+unknown"

__all__ = ["Explanation", "Model", "ModelConfig", "Trace", "VitxError", "data", "evaluate", "explain", "get_method",
           "load_model", "methods", "models", "register", "trace", "__version__"]
