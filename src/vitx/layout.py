"""Token layout: where the prefix tokens and the patch grid sit in a ViT's token sequence.

Every ViT here orders its tokens as ``[prefix tokens..., patch tokens in row-major order]``;
the prefix holds the class token (CLS), a distillation token (DeiT) and register tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import VitxError


@dataclass(frozen=True)
class TokenLayout:
    num_prefix: int                 # tokens before the patches
    patch_size: tuple[int, int]     # (ph, pw) in pixels
    grid: tuple[int, int]           # (gh, gw) patches
    cls_index: int | None = 0       # position of the class token, None if the model has none

    @classmethod
    def for_image(cls, height: int, width: int, patch_size: tuple[int, int], num_prefix: int,
                  cls_index: int | None = 0) -> "TokenLayout":
        ph, pw = patch_size
        if height % ph or width % pw:
            raise VitxError(f"image size {height}x{width} is not a multiple of the patch size {ph}x{pw}")
        return cls(num_prefix, (ph, pw), (height // ph, width // pw), cls_index)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def patches(self) -> slice:
        return slice(self.num_prefix, self.num_tokens)

    def key_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """(..., num_patches) bool patches kept -> (..., num_tokens) bool keys kept, the prefix tokens always
        kept: the tap's ``key_mask`` that drops the other patches from every attention layer."""
        prefix = keep.new_ones(*keep.shape[:-1], self.num_prefix, dtype=torch.bool)
        return torch.cat([prefix, keep.bool()], -1)

    def to_grid(self, patch_values: torch.Tensor) -> torch.Tensor:
        """(..., num_patches) -> (..., gh, gw)."""
        return patch_values.reshape(*patch_values.shape[:-1], *self.grid)

    def require_cls(self, method: str) -> int:
        if self.cls_index is None:
            raise VitxError(f"method {method!r} reads the class token's row, and this model has no class token")
        return self.cls_index
