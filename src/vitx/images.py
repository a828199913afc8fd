"""Turn what users call images (paths, PIL images, arrays, tensors) into float RGB tensors in [0, 1].

Grayscale, palette, RGBA (alpha dropped after compositing on white) and 16-bit images are converted,
not refused; anything unreadable is a :class:`VitxError` naming the file or the input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import VitxError


def read_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise VitxError(f"image {str(path)!r} does not exist")
    if path.is_dir():
        raise VitxError(f"image {str(path)!r} is a directory, not an image file")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise VitxError(f"cannot read {str(path)!r} as an image ({reason})") from None


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) float32 in [0, 1]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        # "I;16" is 16-bit by definition; a 32-bit "I" image is read as 16-bit when it exceeds 255
        array = array / (65535.0 if image.mode != "I" or array.max() > 255 else 255.0)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, 1|3|4) uint8/uint16/float array -> (3, H, W) float in [0, 1]."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise VitxError(f"image arrays must be uint8, uint16 or float, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise VitxError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")
    if array.shape[-1] == 4:
        alpha = array[..., 3:]
        array = array[..., :3] * alpha + (1 - alpha)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    return tensor.expand(3, -1, -1).clone() if tensor.shape[0] == 1 else tensor


def to_tensor(image) -> torch.Tensor:
    """One image of any accepted kind -> (3, H, W) float in [0, 1]."""
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(pil_to_array(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        return array_to_tensor(image)
    if isinstance(image, torch.Tensor):
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise VitxError(f"an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(image.shape)}")
        return (image.float() / 255 if image.dtype == torch.uint8 else image.float()).expand(3, -1, -1)
    raise VitxError(f"cannot use a {type(image).__name__} as an image: pass a path, PIL image, array or tensor")
