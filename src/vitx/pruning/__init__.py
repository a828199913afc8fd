"""Token pruning that explains: ViTs that learn (or are told) which patch tokens they can drop, and whose keep
decisions are read as explanations (Haurum et al.'s survey: DynamicViT and EViT explain as a by-product of
speed, IA-RED² and Vision DiffMask are built to explain).

:mod:`.blocks` runs a vitx ViT's blocks on a subset of tokens or with an attention policy; :mod:`.stages` records
per-stage keep decisions and turns them into token maps; one module per method holds its mechanism.
"""
