"""DINO's multi-crop augmentation (Caron et al., ICCV 2021, Emerging Properties in Self-Supervised Vision Transformers;
facebookresearch/dino, ``DataAugmentationDINO``) on batches of shapes images, batched and seeded.

Per image: a random resized crop (area share drawn uniformly from ``scale``, log-uniform aspect ratio in [3/4, 4/3]),
a horizontal flip with probability 1/2, colour jitter with probability 0.8 (brightness 0.4, contrast 0.4, saturation
0.2, hue 0.1, applied in that fixed order; torchvision draws a random order), grayscale with probability 0.2; the
second global crop is solarised with probability 0.2. Left out: the Gaussian blur, whose radii (0.1 to 2 px at 224 px)
shrink below 0.6 px at 64 px. The hue shift is a rotation of the chroma plane of YIQ, not torchvision's HSV shift.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GLOBAL_SCALE = (0.4, 1.0)   # the authors' defaults (share of the image's area)
LOCAL_SCALE = (0.05, 0.4)
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def resized_crop(images: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """A random crop of each image (area share in ``scale``, aspect ratio in [3/4, 4/3], inside the image), resized to
    ``size`` x ``size`` bilinearly and flipped horizontally with probability 1/2."""
    n = images.shape[0]
    area = _uniform(n, *scale, g)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), g))
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx = (2 * torch.rand(n, generator=g) - 1) * (1 - width)   # crop centres in [-1, 1] coordinates
    cy = (2 * torch.rand(n, generator=g) - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width * flip, cx, height, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, (n, images.shape[1], size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(images: torch.Tensor) -> torch.Tensor:
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def colour_jitter(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter with probability 0.8, then grayscale with probability 0.2."""
    n = images.shape[0]
    view = lambda t: t.to(images.device, images.dtype).view(n, 1, 1, 1)
    on = view(torch.rand(n, generator=g) < 0.8)
    brightness, contrast = view(_uniform(n, 0.6, 1.4, g)), view(_uniform(n, 0.6, 1.4, g))
    saturation, hue = view(_uniform(n, 0.8, 1.2, g)), _uniform(n, -0.1, 0.1, g) * 2 * math.pi
    x = (images * brightness).clamp(0, 1)
    x = ((x - _gray(x).mean((2, 3), keepdim=True)) * contrast + _gray(x).mean((2, 3), keepdim=True)).clamp(0, 1)
    x = ((x - _gray(x)) * saturation + _gray(x)).clamp(0, 1)
    yiq = _RGB_TO_YIQ.to(images.device, images.dtype)
    cos, sin = hue.cos().to(yiq), hue.sin().to(yiq)
    rotate = torch.zeros(n, 3, 3, dtype=yiq.dtype, device=yiq.device)
    rotate[:, 0, 0], rotate[:, 1, 1], rotate[:, 1, 2], rotate[:, 2, 1], rotate[:, 2, 2] = 1, cos, -sin, sin, cos
    mix = torch.linalg.inv(yiq) @ rotate @ yiq                      # (n, 3, 3): RGB -> rotated RGB
    x = torch.einsum("nij,njhw->nihw", mix, x).clamp(0, 1)
    x = torch.where(on.bool(), x, images)
    gray = view(torch.rand(n, generator=g) < 0.2).bool()
    return torch.where(gray, _gray(x).expand_as(x), x)


def solarize(images: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Invert the pixels at or above 1/2 (PIL's threshold 128 of 255) in each image with probability ``p``."""
    on = (torch.rand(images.shape[0], generator=g) < p).to(images.device).view(-1, 1, 1, 1)
    return torch.where(on & (images >= 0.5), 1 - images, images)


def multi_crop(images: torch.Tensor, global_size: int, local_size: int, locals_: int,
               g: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The two global views and ``locals_`` local views of a batch of images in [0, 1] (B, 3, H, W)."""
    views = [colour_jitter(resized_crop(images, global_size, GLOBAL_SCALE, g), g) for _ in range(2)]
    views[1] = solarize(views[1], 0.2, g)
    local = [colour_jitter(resized_crop(images, local_size, LOCAL_SCALE, g), g) for _ in range(locals_)]
    return views, local
