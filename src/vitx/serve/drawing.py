"""What a finished job's maps are drawn as: the map alone on the shared colour scale, the overlay, the raw values."""
from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ..explanation import Explanation
from ..viz.overlay import overlay_scale

CMAP = "jet"          # one colormap for every map, so maps compare on one scale: 0 (blue) .. 1 (red)
def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def map_png(exp: Explanation, i: int) -> bytes:
    """Map ``i`` alone, its values (already in [0, 1], min-max scaled by vitx.explain) coloured with :data:`CMAP`
    as they are, not scaled again."""
    values = exp.maps[i].detach().float().cpu().numpy().clip(0, 1)
    colours = (colormaps[CMAP](values)[..., :3] * 255).round().astype(np.uint8)
    picture = Image.fromarray(colours)
    scale = overlay_scale(values.shape)
    return png_bytes(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))


def overlay_png(exp: Explanation, i: int) -> bytes:
    """Map ``i`` over its image (:meth:`Explanation.overlay`; a detector's box and label drawn; a question's words
    are left to the page, which has them as text)."""
    return png_bytes(exp.overlay(i, cmap=CMAP, scale=overlay_scale(exp.maps.shape[-2:]), words=False))


def map_npy(exp: Explanation, i: int) -> bytes:
    """Map ``i`` as a float32 .npy file."""
    out = io.BytesIO()
    np.save(out, exp.maps[i].detach().float().cpu().numpy().astype(np.float32))
    return out.getvalue()
