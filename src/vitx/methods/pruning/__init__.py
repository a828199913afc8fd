"""The pruning family (:mod:`vitx.pruning`): what a pruned or pooled ViT keeps, read as an explanation. Each module
says what its maps are of (the model itself, or a pruned twin fine-tuned from it) and what they show; importing this
package registers them all."""
from . import tokens  # noqa: F401  (first: the registry, and so every table, lists methods in import order)
from . import diffmask  # noqa: F401
from . import slimming  # noqa: F401
from . import xpruner  # noqa: F401
from . import hvt  # noqa: F401
