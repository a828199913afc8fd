"""ViT-NeT's hard path drawn as its paper draws it (Kim et al., ICML 2022, Fig. 1): per node on the path, the
prototype's training patch above the node's similarity map on the input, the input patch most like the prototype
framed (green where the node went left, the prototype being present, red where it went right)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .overlay import heatmap

GAP = 4   # pixels between panels
LEFT, RIGHT = (40, 200, 60), (230, 40, 40)


def tree_path(image: torch.Tensor, path: dict, similarity: torch.Tensor, prototypes: torch.Tensor, map_: torch.Tensor,
              scale: int = 4) -> Image.Image:
    """``image`` (3, H, W) in [0, 1]; ``path`` one image's ``details["path"]`` entry; ``similarity`` (depth, gh, gw)
    the path's maps; ``prototypes`` (depth, 3, p, p) the prototypes' training patches; ``map_`` (H, W) the method's
    map. Columns: the image above its map, then one per node, the prototype's patch above its similarity map."""
    image = image.detach().float().cpu().clamp(0, 1)
    height, width = image.shape[-2:]
    blend = lambda values: 0.5 * image.permute(1, 2, 0).numpy() + 0.5 * heatmap(values)
    upsample = lambda values: torch.nn.functional.interpolate(values[None, None].float().cpu(), size=(height, width),
                                                             mode="nearest")[0, 0].numpy()
    columns = [(image.permute(1, 2, 0).numpy(), blend(map_.detach().cpu().numpy()))]
    for patch, values in zip(prototypes, similarity):
        enlarged = torch.nn.functional.interpolate(patch[None].float().cpu(), size=(height, width), mode="nearest")[0]
        columns.append((enlarged.permute(1, 2, 0).numpy(), blend(upsample(values))))
    sheet = np.ones((2 * height + GAP, len(columns) * (width + GAP) - GAP, 3))
    for k, (top, bottom) in enumerate(columns):
        left = k * (width + GAP)
        sheet[:height, left:left + width], sheet[height + GAP:, left:left + width] = top, bottom
    picture = Image.fromarray((sheet.clip(0, 1) * 255).round().astype(np.uint8))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    gh, gw = similarity.shape[-2:]
    for k, node in enumerate(path["nodes"], start=1):
        row, col = node["nearest_patch"]
        x0 = (k * (width + GAP) + col * width // gw) * scale
        y0 = (height + GAP + row * height // gh) * scale
        draw.rectangle([x0, y0, x0 + width // gw * scale - 1, y0 + height // gh * scale - 1],
                       outline=LEFT if node["branch"] == "left" else RIGHT, width=2)
    return picture
