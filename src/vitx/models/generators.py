"""Image generators for NesT's GAN experiment (Zhang et al., AAAI 2022, Sec. 4.4): the transposed NesT, and a
convolutional generator of comparable size to compare it with, both judged by one discriminator.

Transposed NesT: z -> one block of b×b positions at the top level; at each level, transformer layers inside
every block (with per-block position embeddings), then *block de-aggregation*: a 3×3 convolution to four times
the next level's width and a pixel shuffle, which doubles the map's side, so one block becomes four; at the
bottom, each position becomes a p×p patch of pixels (a linear map and a pixel shuffle). Images in [0, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .nest import TransformerLayer, blockify, deblockify


@dataclass(frozen=True)
class GeneratorConfig:
    latent_dim: int = 64
    image_size: int = 64
    patch_size: int = 4
    embed_dims: tuple[int, ...] = (128, 96, 64)   # from the top level down
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (4, 3, 2)
    mlp_ratio: float = 2.0

    @property
    def block_size(self) -> int:
        return self.image_size // self.patch_size // 2 ** (len(self.embed_dims) - 1)


class NestGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.cfg = cfg
        b, dims = cfg.block_size, cfg.embed_dims
        self.block = b
        self.stem = nn.Linear(cfg.latent_dim, b * b * dims[0])
        self.pos_embed = nn.ParameterList([nn.Parameter(torch.randn(1, 4 ** level, b * b, dim) * 0.02)
                                           for level, dim in enumerate(dims)])
        self.levels = nn.ModuleList([
            nn.Sequential(*[TransformerLayer(dim, heads, cfg.mlp_ratio, True) for _ in range(depth)])
            for dim, depth, heads in zip(dims, cfg.depths, cfg.num_heads)])
        self.unpool = nn.ModuleList([nn.Sequential(nn.Conv2d(dims[i], 4 * dims[i + 1], 3, padding=1),
                                                   nn.PixelShuffle(2)) for i in range(len(dims) - 1)])
        self.norm = nn.LayerNorm(dims[-1])
        self.to_pixels = nn.Linear(dims[-1], 3 * cfg.patch_size ** 2)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    def config(self) -> dict:
        return asdict(self.cfg)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> images (B, 3, H, W) in [0, 1]."""
        b, dims = self.block, self.cfg.embed_dims
        x = self.stem(z).view(-1, 1, b * b, dims[0])
        for level, layers in enumerate(self.levels):
            x = deblockify(layers(x + self.pos_embed[level]), b)                 # (B, side, side, C)
            if level < len(self.unpool):
                x = self.unpool[level](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
                x = blockify(x, b)
        pixels = self.to_pixels(self.norm(x)).permute(0, 3, 1, 2)               # (B, 3·p², side, side)
        return torch.sigmoid(nn.functional.pixel_shuffle(pixels, self.cfg.patch_size))


class ConvGenerator(nn.Module):
    """DCGAN's generator (Radford et al., ICLR 2016) for the same latent and image size: a linear map to 4×4,
    then stride-2 transposed convolutions with BatchNorm and ReLU, halving the width at each doubling. The default
    width makes it as large as the default transposed NesT (1.29M against 1.31M parameters)."""

    def __init__(self, latent_dim: int = 64, image_size: int = 64, width: int = 304):
        super().__init__()
        stages = (image_size // 4).bit_length() - 1
        self.latent_dim, self.image_size, self.width = latent_dim, image_size, width
        self.stem = nn.Sequential(nn.Linear(latent_dim, 16 * width), nn.Unflatten(1, (width, 4, 4)),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, channels = [], width
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels // 2),
                       nn.ReLU()]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "image_size": self.image_size, "width": self.width}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(z))


class Discriminator(nn.Module):
    """DCGAN's discriminator: stride-2 4×4 convolutions with LeakyReLU(0.2) from 64×64 down to 4×4, then one
    logit; spectral normalisation (Miyato et al., ICLR 2018) on every layer keeps it 1-Lipschitz-ish."""

    def __init__(self, image_size: int = 64, width: int = 32):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        layers, channels = [], 3
        for i in range((image_size // 4).bit_length() - 1):
            layers += [sn(nn.Conv2d(channels, width * 2 ** i, 4, 2, 1)), nn.LeakyReLU(0.2)]
            channels = width * 2 ** i
        self.body = nn.Sequential(*layers, nn.Flatten(), sn(nn.Linear(channels * 16, 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> (B,) logits of 'real'."""
        return self.body(images * 2 - 1)[:, 0]


__all__ = ["ConvGenerator", "Discriminator", "GeneratorConfig", "NestGenerator"]
