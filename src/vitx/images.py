"""Turn what users call images (paths, PIL images, arrays, tensors) into float RGB tensors in [0, 1], fitted to
the model's size, and remember where each image went (:class:`Frame`) so that maps can go back to it.

Grayscale, palette, RGBA (alpha dropped after compositing on white), 16-bit and 32-bit float ("F") images are
converted, not refused. Float pixels are read as [0, 1]; what cannot be such an image (NaN or infinite values,
values beyond [0, 1] by more than :data:`TOLERANCE`, e.g. 0-255 levels or model-normalised input) is refused
with a :class:`VitxError` naming the image, never clamped into a white or black picture.
"""
from __future__ import annotations

import io

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import VitxError

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # the normalisation ImageNet-trained weights expect, per RGB channel
IMAGENET_STD = (0.229, 0.224, 0.225)

TOLERANCE = 0.1        # float pixels in [-0.1, 1.1] are clamped to [0, 1] (resampling overshoot); beyond is refused
RESIZES = ("stretch", "crop", "pad")
INTEGER_LEVELS = {torch.uint8: 255.0, torch.uint16: 65535.0}


def read_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """The image file at ``path``, loaded, or its raw bytes ``data`` (read elsewhere; ``path`` then names it in the
    errors); a :class:`VitxError` naming ``path`` when it is missing or cannot be read as an image."""
    if data is None:
        path = Path(path)
        if not path.exists():
            raise VitxError(f"image {str(path)!r} does not exist")
        if path.is_dir():
            raise VitxError(f"image {str(path)!r} is a directory, not an image file")
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise VitxError(f"cannot read {str(path)!r} as an image ({reason})") from None


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) float32, in [0, 1] except for a float ("F") image, which keeps its values."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        if image.mode != "F":
            # "I;16" is 16-bit by definition; a 32-bit "I" image is read as 16-bit when it exceeds 255
            array = array / (65535.0 if image.mode != "I" or array.max() > 255 else 255.0)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, 1|3|4) uint8/uint16/float array -> (3, H, W) float (uint8 and uint16 scaled to [0, 1])."""
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
    """One image of any accepted kind -> (3, H, W) float; integer pixels are scaled to [0, 1], float ones kept."""
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
        levels = INTEGER_LEVELS.get(image.dtype)
        return (image.float() / levels if levels else image.float()).expand(3, -1, -1)
    raise VitxError(f"cannot use a {type(image).__name__} as an image: pass a path, PIL image, array or tensor")


def image_name(image) -> str | None:
    """The file stem of an image given as a path or opened from a file, else None."""
    path = image if isinstance(image, (str, Path)) else getattr(image, "filename", None)
    return Path(path).stem if path else None


def checked_pixels(pixels: torch.Tensor, label: str) -> torch.Tensor:
    """``pixels`` clamped to [0, 1] once known to be an image in [0, 1] (up to :data:`TOLERANCE`)."""
    if not torch.isfinite(pixels).all():
        raise VitxError(f"{label} has NaN or infinite values")
    low, high = pixels.min().item(), pixels.max().item()
    if low < -TOLERANCE:
        raise VitxError(f"{label} has values down to {low:g}, and float pixels are read in [0, 1] (model input "
                        "from model.preprocess goes to vitx.explain as it is)")
    if high > 1 + TOLERANCE:
        raise VitxError(f"{label} has values up to {high:g}, and float pixels are read in [0, 1]: divide 8-bit "
                        "levels by 255 (16-bit by 65535) or pass integer pixels")
    return pixels.clamp(0, 1)


@dataclass(frozen=True)
class Frame:
    """Where one image went in the model input: its original ``size`` (height, width), and per axis (y, x) the
    ``scale`` and ``offset`` taking original coordinates o to model coordinates m = scale · o + offset (pixel
    edges, continuous); ``name`` is its file stem when it came from a file."""
    size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]
    name: str | None = None

    def to_original(self, maps: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Maps (..., H, W) over the model input -> (..., height, width) over the original image, sampled
        bilinearly at each original pixel's centre; pixels the model never saw (cropped away) get ``fill``."""
        H, W = maps.shape[-2:]
        flat = maps.reshape(-1, 1, H, W).float()
        axes, seen = [], []
        for length, scale, offset, model_length in zip(self.size, self.scale, self.offset, (H, W)):
            m = (torch.arange(length, device=maps.device, dtype=flat.dtype) + 0.5) * scale + offset
            seen.append((m >= 0) & (m <= model_length))
            # sampled within the image's own pixels, never blended with a letterbox's
            low, high = max(offset, 0.0) + 0.5, min(offset + scale * length, model_length) - 0.5
            m = m.clamp(low, max(low, high))
            axes.append(m / model_length * 2 - 1)                 # grid_sample's [-1, 1], align_corners=False
        gy, gx = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None].expand(flat.shape[0], -1, -1, -1)
        out = F.grid_sample(flat, grid, mode="bilinear", align_corners=False)[:, 0]
        return out.masked_fill(~(seen[0][:, None] & seen[1][None]), fill).reshape(*maps.shape[:-2], *self.size)


def resample(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def fit(pixels: torch.Tensor, size: tuple[int, int], resize: str, background: tuple[float, ...],
        name: str | None = None) -> tuple[torch.Tensor, Frame]:
    """An image (3, h, w) -> (3, H, W) at the model's ``size``, and its :class:`Frame`. ``resize``: "stretch"
    (to H x W, ignoring the aspect ratio), "crop" (the short side to fit, then the centre cut out) or "pad"
    (the long side to fit, centred on a ``background`` colour: letterboxing)."""
    (h, w), (H, W) = pixels.shape[-2:], size
    if resize == "stretch":
        return resample(pixels, size), Frame((h, w), (H / h, W / w), (0.0, 0.0), name)
    grow = max(H / h, W / w) if resize == "crop" else min(H / h, W / w)
    inner = [max(1, round(length * grow)) for length in (h, w)]
    inner = [max(n, m) if resize == "crop" else min(n, m) for n, m in zip(inner, (H, W))]
    scaled = resample(pixels, tuple(inner))
    top, left = (abs(H - inner[0]) // 2, abs(W - inner[1]) // 2)
    if resize == "crop":
        fitted, offset = scaled[:, top:top + H, left:left + W], (-top, -left)
    else:
        colour = torch.tensor(background, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        fitted = colour.expand(3, H, W).clone()
        fitted[:, top:top + inner[0], left:left + inner[1]] = scaled
        offset = (top, left)
    return fitted, Frame((h, w), (inner[0] / h, inner[1] / w), tuple(map(float, offset)), name)


def load_images(images, size: tuple[int, int], resize: str = "stretch",
                background: tuple[float, ...] = (0.0, 0.0, 0.0)) -> tuple[torch.Tensor, list[Frame]]:
    """One image, a list, or a (B, 3, H, W) batch in any accepted form -> (B, 3, H, W) in [0, 1] at ``size``
    and a :class:`Frame` per image (see :func:`fit` for ``resize``)."""
    if resize not in RESIZES:
        raise VitxError(f"resize must be {', '.join(map(repr, RESIZES))}, got {resize!r}")
    if isinstance(images, torch.Tensor) and images.dim() == 4 or isinstance(images, (list, tuple)):
        images = list(images)
    else:
        images = [images]
    if not images:
        raise VitxError("no images given")
    batch, frames = [], []
    for i, image in enumerate(images):
        name = image_name(image)
        pixels = checked_pixels(to_tensor(image), f"image {i}" + (f" ({name!r})" if name else ""))
        fitted, frame = fit(pixels, size, resize, background, name)
        batch.append(fitted)
        frames.append(frame)
    return torch.stack(batch), frames


def check_model_input(x: torch.Tensor, input_range: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """Refuse model input (B, 3, H, W) that is not float or has NaN or infinite values; warn when it looks like
    raw pixels rather than the model-normalised input :meth:`Model.preprocess` gives, which spans
    [min (0 − mean)/std, max (1 − mean)/std] over the channels (``input_range``, :attr:`ModelConfig.input_range`):

    - every value in [0, 1], not all equal, while the model's normalisation takes black below 0 (some mean > 0).
      Preprocessed images lie in [0, 1] only when every pixel of every image lies within [mean, mean + std] of
      its channel: for the zoo's mean 0.5 and std 0.25 a batch of pale grey images, none of the bundled samples
      or ``vitx.data.shapes`` images;
    - values beyond 10 times the span's top (0-255 levels)."""
    if not x.is_floating_point():
        raise VitxError(f"model input must be a float tensor, got {x.dtype}: integer pixels go through "
                        "model.preprocess first")
    finite = torch.isfinite(x.flatten(1)).all(1)
    if not finite.all():
        raise VitxError(f"model input image {int((~finite).nonzero()[0])} has NaN or infinite values")
    low, high = x.min().item(), x.max().item()
    black, white = min(input_range[0]), max(input_range[1])
    if 0 <= low < high <= 1 and black < 0 or high > 10 * white:
        warnings.warn(f"vitx.explain takes a (B, 3, H, W) tensor as model input, and this one spans "
                      f"[{low:.3g}, {high:.3g}] like raw pixels, while this model's input spans [{black:.2g}, "
                      f"{white:.2g}]: pass images through model.preprocess first", stacklevel=3)
