"""A pruned ViT's keep decisions drawn as its papers draw them (DynamicViT's Fig. 4, EViT's Fig. 5): the image once,
then once per stage with the patches dropped so far washed out to grey."""
from __future__ import annotations

import torch
from PIL import Image

GAP = 4   # pixels between panels


def pruned_stages(image: torch.Tensor, kept: list[list[int]], grid: tuple[int, int], scale: int = 4,
                  wash: float = 0.75) -> Image.Image:
    """``image`` (3, H, W) in [0, 1], then a panel per stage of ``kept`` (each stage's kept patch indices, row-major
    on ``grid``) with every patch not kept by that stage blended ``wash`` of the way to light grey."""
    image = image.detach().float().cpu().clamp(0, 1)
    height, width = image.shape[-2:]
    panels = [image]
    for stage in kept:
        keep = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
        keep[torch.as_tensor(stage, dtype=torch.long)] = True
        mask = keep.view(1, 1, *grid).float()
        mask = torch.nn.functional.interpolate(mask, size=(height, width), mode="nearest")[0]
        panels.append(image * mask + (image * (1 - wash) + 0.85 * wash) * (1 - mask))
    strip = torch.ones(3, height, len(panels) * (width + GAP) - GAP)
    for k, panel in enumerate(panels):
        strip[:, :, k * (width + GAP):k * (width + GAP) + width] = panel
    pixels = (strip.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    picture = Image.fromarray(pixels)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
