"""Inherently explainable and self-supervised ViTs (issue 18): explanations built into the model (a tree of
prototypes, concepts the logits are linear in, attribute-guided attention), a training-free cut of the token graph,
and DINO's attention heads. One module per method; importing this package registers them all."""
from . import concepts, dino, exvit, rcut, vitnet  # noqa: F401
