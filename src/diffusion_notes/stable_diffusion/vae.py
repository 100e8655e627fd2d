"""The KL-regularised autoencoder of latent diffusion: 32x32x3 images <-> 8x8x4 latents.

Stable Diffusion never runs its diffusion model on pixels. An encoder E maps an
image x (H x W x 3) to a latent z (H/f x W/f x c), a decoder D maps it back, and
the diffusion model learns the distribution of z instead (Rombach et al. 2022,
section 3). SD v1 uses f = 8 and c = 4 (512x512x3 -> 64x64x4, 48x fewer numbers); here
f = 4 and c = 4 (32x32x3 -> 8x8x4, 12x fewer).

The encoder outputs a diagonal Gaussian q(z|x) = N(mu, sigma^2). Training
minimises the reconstruction error plus a small weight times KL(q(z|x) || N(0, I)),
which keeps the latent space smooth and its scale bounded without squeezing
information out of it (SD uses a weight of 1e-6). The latent's overall scale is
arbitrary, so before diffusion it is multiplied by a scale factor computed from
data, 1 / std(z) (SD v1's 0.18215).

Notation: B batch, x image in [-1, 1] (B, 3, 32, 32), z latent (B, 4, 8, 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_notes.data.shapes import ShapesDataset, check_images, render
from diffusion_notes.evaluation.metrics import psnr
from diffusion_notes.nn.resnet import Downsample, ResBlock, Upsample, group_norm
from diffusion_notes.rng import per_item_randn


@dataclass(frozen=True)
class VAEConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # width per resolution: 32x32, 16x16, 8x8 (f = 2^(len - 1))
    blocks_per_level: int = 1
    latent_channels: int = 4
    kl_weight: float = 1e-6  # weight of the KL sum against the squared-error sum (SD v1: 1e-6)


class DiagonalGaussian:
    """q(z|x) = N(mean, exp(logvar)) per latent number; `sample` draws z = mean + std * eps."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, c, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = per_item_randn(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps  # (B, c, h, w)

    def kl(self) -> torch.Tensor:
        """KL(N(mean, var) || N(0, I)) summed over each latent: (B,).

        Book: eq-gaussian-kl
        Paper: Kingma & Welling 2014, Appendix B
        """
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


def _levels(widths: tuple[int, ...], blocks_per_level: int, resample: type) -> nn.Sequential:
    """ResBlocks at each width, with `resample` (Downsample or Upsample) between levels."""
    blocks, prev = [], widths[0]
    for i, width in enumerate(widths):
        blocks += [ResBlock(prev if j == 0 else width, width) for j in range(blocks_per_level)]
        prev = width
        if i < len(widths) - 1:
            blocks.append(resample(width))
    return nn.Sequential(*blocks)


class Encoder(nn.Module):
    """x (B, 3, H, W) -> moments (B, 2c, H/f, W/f): mean and log-variance stacked on channels."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.channels
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.blocks = _levels(ch, config.blocks_per_level, Downsample)  # (B, C_last, H/f, W/f)
        prev = ch[-1]
        self.mid = ResBlock(prev)
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.blocks(self.conv_in(x)))  # (B, C, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2c, h, w)


class Decoder(nn.Module):
    """z (B, c, h, w) -> x_hat (B, 3, f h, f w)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        ch = config.channels[::-1]
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid = ResBlock(ch[0])
        self.blocks = _levels(ch, config.blocks_per_level, Upsample)  # (B, C_first, H, W)
        prev = ch[-1]
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.mid(self.conv_in(z)))  # (B, C, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


class AutoencoderKL(nn.Module):
    """E and D of latent diffusion. `encode` gives q(z|x); `decode` maps latents back to images.

    Paper: Rombach et al. 2022, section 3.1 and Appendix G
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config = config or VAEConfig()
        if len(config.channels) < 1 or config.latent_channels < 1:
            raise ValueError("VAEConfig needs at least one level and one latent channel")
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images (B, 3, 32, 32) in [-1, 1] -> q(z|x), whose mean is (B, 4, 8, 8)."""
        device = next(self.parameters()).device
        return DiagonalGaussian(self.encoder(check_images(x).to(device)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, h, w) (unscaled) -> images (B, 3, f h, f w), roughly in [-1, 1] (not clamped)."""
        c = self.config.latent_channels
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != c:
            raise ValueError(f"latents must have shape (B, {c}, h, w), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        return self.decoder(z.to(next(self.parameters()).device))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training forward: (x_hat, posterior) with z drawn from the posterior."""
        posterior = DiagonalGaussian(self.encoder(x))
        return self.decoder(posterior.sample(generator)), posterior


def vae_loss(x: torch.Tensor, x_hat: torch.Tensor, posterior: DiagonalGaussian, kl_weight: float) -> torch.Tensor:
    r"""(sum ||x - x_hat||^2 + kl_weight * sum KL) / (number of pixel values), averaged over the batch.

    Dividing both sums by the same count keeps the loss O(1) while `kl_weight`
    keeps its meaning (the weight of the KL sum against the reconstruction sum).
    Rombach et al. use an L1 + perceptual + adversarial reconstruction term;
    a squared error suits these flat-coloured images and is what PSNR measures.

    Book: eq-vae-loss
    Paper: Rombach et al. 2022, Appendix G; Kingma & Welling 2014, eq. 10
    """
    per_image = (x - x_hat).pow(2).sum(dim=(1, 2, 3)) + kl_weight * posterior.kl()  # (B,)
    return per_image.mean() / x[0].numel()


@torch.no_grad()
def latent_scale_factor(vae: AutoencoderKL, images: torch.Tensor, seed: int = 0) -> float:
    """1 / std of posterior samples z over `images`: the number that gives latents unit variance.

    Stable Diffusion v1's 0.18215 was computed this way from a batch of its training data.

    Book: eq-latent-scale
    """
    z = vae.encode(images).sample(torch.Generator().manual_seed(seed))  # (N, c, h, w)
    return float(1.0 / z.flatten().std())


def vae_batch(step: int, batch_size: int, seed: int = 0) -> dict:
    """Training batch `step`: images step * B ... of the endless Shapes training split, (B, 3, 32, 32)."""
    dataset = ShapesDataset("train", length=10**9, seed=seed)
    start = step * batch_size
    return {"images": render([dataset.attributes(i) for i in range(start, start + batch_size)])}


def vae_training_loss(model: AutoencoderKL, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    x = batch["images"].to(next(model.parameters()).device)
    x_hat, posterior = model(x, generator)
    return vae_loss(x, x_hat, posterior, model.config.kl_weight)


EVAL_IMAGES = 512


@torch.no_grad()
def evaluate_vae(model: AutoencoderKL) -> dict:
    """Held-out PSNR (mean and 5th percentile, decoding the posterior mean), the latent scale factor, mean KL."""
    model.eval()
    heldout = ShapesDataset("heldout", EVAL_IMAGES, seed=0).images()
    posterior = model.encode(heldout)
    values = psnr(heldout, model.decode(posterior.mean))
    train_images = ShapesDataset("train", EVAL_IMAGES, seed=1).images()
    return {
        "psnr_heldout_db": round(float(values.mean()), 3),
        "psnr_heldout_p5_db": round(float(values.quantile(0.05)), 3),
        "scale_factor": round(latent_scale_factor(model, train_images), 6),
        "kl_per_image": round(float(posterior.kl().mean()), 3),
        "latent_std": round(float(posterior.mean.std()), 4),
        "compression": math.prod(heldout.shape[1:]) / math.prod(posterior.mean.shape[1:]),
    }
