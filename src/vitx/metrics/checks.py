"""Input checks shared by the metrics: every problem a caller can fix is a one-line :class:`VitxError`."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import VitxError


def as_maps(maps, name: str = "maps") -> torch.Tensor:
    """(B, H, W) finite float maps (any sign, any scale), as a float tensor."""
    maps = torch.as_tensor(maps) if isinstance(maps, (np.ndarray, list, tuple)) else maps
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise VitxError(f"{name} must be a (B, H, W) tensor, got {_shape(maps)}")
    if maps.shape[0] == 0:
        raise VitxError(f"{name} holds no images")
    if not maps.is_floating_point():
        maps = maps.float()
    if not torch.isfinite(maps).all():
        raise VitxError(f"{name} contain NaN or infinite values")
    return maps


def as_masks(masks, like: torch.Tensor, multi: bool = False) -> torch.Tensor:
    """Boolean ground-truth masks matching ``like`` (B, H, W): (B, H, W), or (B, C, H, W) when ``multi``."""
    masks = torch.as_tensor(masks) if isinstance(masks, (np.ndarray, list, tuple)) else masks
    dims = 4 if multi else 3
    expected = "(B, C, H, W)" if multi else "(B, H, W)"
    if not isinstance(masks, torch.Tensor) or masks.dim() != dims:
        raise VitxError(f"masks must be a {expected} tensor, got {_shape(masks)}")
    if masks.shape[0] != like.shape[0] or masks.shape[-2:] != like.shape[-2:]:
        raise VitxError(f"masks {tuple(masks.shape)} do not match maps {tuple(like.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or masks.is_complex():
            raise VitxError(f"masks must be bool (or integer 0/1), got {masks.dtype}")
        masks = masks != 0
    return masks.to(like.device)


def nonempty(masks: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """Raise when an image's mask (B, H, W) is empty; return the masks."""
    empty = ~masks.flatten(1).any(1)
    if empty.any():
        raise VitxError(f"the {what} of image {int(empty.nonzero()[0])} is empty: nothing to localise")
    return masks


def as_targets(targets, count: int, num_classes: int | None, device) -> torch.Tensor:
    """(count,) long class ids on ``device``, in range when ``num_classes`` is known."""
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        targets = [int(targets)] * count
    targets = torch.as_tensor(targets) if not isinstance(targets, torch.Tensor) else targets
    if targets.dim() != 1 or targets.shape[0] != count:
        raise VitxError(f"targets must be ({count},) class ids, one per image, got {_shape(targets)}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise VitxError(f"targets must be integer class ids, got {targets.dtype}")
    targets = targets.long().to(device)
    if num_classes is not None and count and (targets.min() < 0 or targets.max() >= num_classes):
        raise VitxError(f"a target class is out of range: the model has {num_classes} classes "
                        f"(0-{num_classes - 1})")
    return targets


def choice(value: str, options, what: str) -> str:
    if value not in options:
        raise VitxError(f"unknown {what} {value!r}; choose one of: {', '.join(options)}")
    return value


def _shape(value) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return str(tuple(value.shape))
    return type(value).__name__
