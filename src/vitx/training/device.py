"""What the recipes that can train off the CPU share (VQA, detector, image-text): the net, and the shapes data's input
normalisation kept on the net's device."""
from __future__ import annotations

import torch
from torch import nn

from .recipes import MEAN, STD


class OnDevice:
    """A recipe's ``net`` with the input normalisation (:data:`MEAN`, :data:`STD`) beside it on its device."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.mean, self.std = (torch.tensor(v).view(1, -1, 1, 1) for v in (MEAN, STD))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def to(self, device) -> None:
        self.net.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (any dtype, any device) as the net's float32 input on its device."""
        return (images.to(self.device, torch.float32) - self.mean) / self.std
