"""Generative adversarial training on shapes images and the Fréchet distance that scores it (NesT's generator
experiment, Zhang et al., AAAI 2022, Sec. 4.4): the ``generator`` recipes of ``vitx train`` and their scores.

Loss: the non-saturating GAN loss (Goodfellow et al., NeurIPS 2014): the discriminator D minimises
softplus(−D(x)) + softplus(D(G(z))), the generator softplus(−D(G(z))); one D step per G step, both with Adam,
β = (0.5, 0.999), the same learning-rate schedule. Fréchet distance (Heusel et al., NeurIPS 2017, with another
feature extractor): FD = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) between Gaussians fitted to the features
of real and of generated images; the features are the class token leaving the last block of the zoo's
``shapes-vit`` (the project's own shapes classifier: no Inception network can be downloaded here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from ..checkpoint import read_checkpoint
from ..data import shapes
from ..errors import VitxError
from ..loading import load_model
from ..model import Model
from ..models.generators import ConvGenerator, Discriminator, GeneratorConfig, NestGenerator
from ..trace import trace

FEATURE_MODEL = "shapes-vit"
FD_IMAGES = 1000          # generated and real images per Fréchet distance
REAL_SEED = 10_000        # data seed of the real images the distance compares with


@torch.no_grad()
def features(model: Model, images: torch.Tensor, batch_size: int = 250) -> np.ndarray:
    """(n, D) float64: the class token leaving ``model``'s last block, for images in [0, 1]."""
    out = []
    for start in range(0, len(images), batch_size):
        with trace(model, attentions=False) as tr:
            model(model.normalize(images[start:start + batch_size].to(model.device)))
        out.append(tr.tokens[-1][:, 0].double().cpu())
    return torch.cat(out).numpy()


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FD between Gaussians fitted to two (n, D) feature sets."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = linalg.sqrtm(cov_r @ cov_f)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * np.real(root)))


def build_generator(kind: str, config: dict | None = None) -> torch.nn.Module:
    """``kind`` "nest" (the transposed NesT) or "conv" (DCGAN's generator), from a ``config()`` dict."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in (config or {}).items()}
    if kind == "nest":
        return NestGenerator(GeneratorConfig(**config))
    if kind == "conv":
        return ConvGenerator(**config)
    raise VitxError(f"unknown generator kind {kind!r}: 'nest' or 'conv'")


def load_generator(source) -> tuple[torch.nn.Module, dict]:
    """A generator saved by ``vitx train`` (a zoo name or a file) and its metadata."""
    from ..zoo import NAMES, ZOO_DIR
    path = ZOO_DIR / f"{source}.safetensors" if source in NAMES else Path(source)
    if not path.is_file():
        raise VitxError(f"generator {str(source)!r} is neither a zoo name nor a file")
    state, meta = read_checkpoint(path)
    if meta.get("kind") != "generator":
        raise VitxError(f"{path.name!r} is not a generator (it says kind {meta.get('kind')!r})")
    net = build_generator(meta["generator"], meta["config"])
    net.load_state_dict(state)
    return net.eval(), meta


@torch.no_grad()
def sample(generator: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` images (n, 3, H, W) in [0, 1] from latents drawn with ``seed``."""
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    return generator(z.to(next(generator.parameters()).device)).cpu()


class Generator:
    """The ``vitx train`` job of a generator recipe: ``loss`` takes a D step on the real batch and a fresh fake
    one, then returns the generator's loss; every ``recipe.fd_every`` steps the Fréchet distance is recorded."""

    def __init__(self, recipe, out_dir: Path, seed: int):
        self.recipe = recipe
        self.net = build_generator(recipe.arch)
        self.adversary = Discriminator(self.net.config()["image_size"])
        self.d_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=recipe.lr, betas=recipe.betas)
        self.noise = torch.Generator().manual_seed(seed)
        self.scorer = load_model(FEATURE_MODEL)
        self.real = features(self.scorer, shapes(n=FD_IMAGES, seed=REAL_SEED).images)
        self.curve: dict[str, list] = {"step": [], "fd": []}
        self.meta = {"kind": "generator", "generator": recipe.arch, "config": self.net.config(),
                     "fd_curve": self.curve}
        self.step_count = 0

    def loss(self, data) -> torch.Tensor:
        real = data.images
        fake = self.net(torch.randn(len(real), self.net.latent_dim, generator=self.noise))
        d_loss = F.softplus(-self.adversary(real)).mean() + F.softplus(self.adversary(fake.detach())).mean()
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        self.step_count += 1
        if self.step_count % self.recipe.fd_every == 0:
            self.curve["step"].append(self.step_count)
            self.curve["fd"].append(round(self.distance(), 3))
        return F.softplus(-self.adversary(fake)).mean()

    def distance(self, seed: int = 0) -> float:
        was_training = self.net.training
        self.net.eval()
        fd = frechet_distance(self.real, features(self.scorer, sample(self.net, FD_IMAGES, seed)))
        self.net.train(was_training)
        return fd

    def score(self, test_seed: int) -> dict:
        """FD of ``FD_IMAGES`` samples (latent seed ``test_seed``), and for scale, of as many other real images."""
        real_again = features(self.scorer, shapes(n=FD_IMAGES, seed=REAL_SEED + 1).images)
        return {"fd": round(self.distance(test_seed), 3), "fd_images": FD_IMAGES,
                "fd_real": round(frechet_distance(self.real, real_again), 3)}

    def card(self, name: str, recipe, meta: dict) -> str:
        curve = meta["fd_curve"]
        rows = "\n".join(f"| {s} | {fd:.2f} |" for s, fd in zip(curve["step"], curve["fd"]))
        size = sum(p.numel() for p in self.net.parameters())
        what = ("the transposed NesT generator (Zhang et al., AAAI 2022): transformer layers inside blocks, "
                "block de-aggregation by a 3x3 convolution and a pixel shuffle" if recipe.arch == "nest" else
                "DCGAN's convolutional generator (Radford et al., ICLR 2016)")
        return f"""# {name}

A GAN generator of 64x64 shapes images: {what}. {size:,} parameters; latent dimension
{self.net.latent_dim}. `vitx generate --model {name}` writes samples.

## Training

- Command: `{meta['command']}`
- Data: `vitx.data.shapes(variant="single")`, a fresh real batch of {meta['batch_size']} at every step
- Loss: non-saturating GAN loss; discriminator: DCGAN's with spectral normalisation, one step per generator step
- Steps: {meta['steps']}; Adam, learning rate {recipe.lr:g}, betas {recipe.betas}, {recipe.warmup:.0%} warm-up
  then cosine decay (both networks)
- Training time: {meta['train_seconds'] / 60:.1f} minutes on a shared 2-core CPU

## Results

Fréchet distance on `{FEATURE_MODEL}`'s class-token features, {FD_IMAGES:,} generated against {FD_IMAGES:,} real
images (data seed {REAL_SEED}): **{meta['metrics']['fd']:.2f}** at the end (latent seed {meta['test_seed']}).
For scale, {FD_IMAGES:,} other real images (data seed {REAL_SEED + 1}) are at {meta['metrics']['fd_real']:.2f}.

| step | FD |
|---:|---:|
{rows}

## Intended use and limits

Samples of vitx's synthetic shapes world for the NesT generator experiment (docs/nest.md); nothing else.
"""


__all__ = ["FEATURE_MODEL", "Generator", "build_generator", "features", "frechet_distance", "load_generator",
           "sample"]
