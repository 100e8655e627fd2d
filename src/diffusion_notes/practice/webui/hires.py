"""Hires fix: draw small, enlarge, then redraw the enlarged picture part-way (an img2img pass).

    size = target_size(32, 32, hr_scale=2.0)                  # Target(width=64, height=64, crop_x=0, crop_y=0)
    total, start = second_pass_steps(20, 0.7)                 # (28, 8): the last 20 steps of a 28-step grid

A model draws best at the size it was trained at; asked for a larger picture in one pass, it repeats
and stretches objects, because each part of the latent only sees its neighbourhood. Hires fix draws
at the first-pass size, upscales (the latent, or the decoded picture), and runs a second, shorter
img2img pass at the large size: the layout comes from the first pass, the detail from the second.
The rules are the web UI's `StableDiffusionProcessingTxt2Img` (`calculate_target_resolution`,
`sample_hr_pass`) and `sd_samplers_common.setup_img2img_steps`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from diffusion_notes.data.images import to_pil
from diffusion_notes.data.shapes import check_images
from diffusion_notes.practice.webui.resize import resize_image
from diffusion_notes.practice.webui.upscalers import is_latent, latent_upscale
from diffusion_notes.stable_diffusion.vae import DiagonalGaussian


class Target(NamedTuple):
    """The upscaled size in pixels, and the latent rows / columns cut off to reach the asked size."""

    width: int
    height: int
    crop_x: int = 0
    crop_y: int = 0

    def final(self, f: int) -> tuple[int, int]:
        """(width, height) of the second pass's picture for a VAE that shrinks by f."""
        return (self.width // f - self.crop_x) * f, (self.height // f - self.crop_y) * f


def target_size(width: int, height: int, hr_scale: float = 2.0, hr_resize_x: int = 0, hr_resize_y: int = 0,
                f: int = 8) -> Target:
    """Where hires fix upscales a width x height first pass to.

    No resize given: the sizes times hr_scale (rounded down). One side given: that side, the other
    from the aspect ratio. Both given: scale until the picture covers hr_resize_x x hr_resize_y, then
    cut the excess in latent cells (f pixels each), half on each side.
    """
    if not hr_resize_x and not hr_resize_y:
        return Target(int(width * hr_scale), int(height * hr_scale))
    if not hr_resize_y:
        return Target(hr_resize_x, hr_resize_x * height // width)
    if not hr_resize_x:
        return Target(hr_resize_y * width // height, hr_resize_y)
    if width / height < hr_resize_x / hr_resize_y:
        up = Target(hr_resize_x, hr_resize_x * height // width)
    else:
        up = Target(hr_resize_y * width // height, hr_resize_y)
    return up._replace(crop_x=(up.width - hr_resize_x) // f, crop_y=(up.height - hr_resize_y) // f)


def second_pass_steps(steps: int, denoising_strength: float) -> tuple[int, int]:
    """(grid length N, start step): the pass runs the last `steps` steps of an N-step grid.

    N = int(steps / min(d, 0.999)), so the pass starts where img2img with strength d would, and still
    runs exactly `steps` steps (the web UI's setup_img2img_steps when the steps are given).
    """
    if not denoising_strength > 0:
        raise ValueError(f"hires fix needs denoising_strength > 0 (0 would skip the second pass), "
                         f"got {denoising_strength!r}")
    total = int(steps / min(denoising_strength, 0.999))
    return total, total - steps


def crop_latent(z: torch.Tensor, target: Target) -> torch.Tensor:
    """(B, C, h, w) -> the centre, with crop_y rows and crop_x columns cut (the extra one at the end)."""
    h, w = z.shape[-2:]
    y, x = target.crop_y, target.crop_x
    return z[..., y // 2:h - (y + 1) // 2, x // 2:w - (x + 1) // 2]


@torch.no_grad()
def upscale(pipe, z: torch.Tensor, target: Target, upscaler: str) -> torch.Tensor:
    """First-pass latents (B, C, h, w) -> the second pass's input latents (B, C, H', W') after the crop.

    A latent mode interpolates the latent to the target's size / f. A pixel upscaler decodes, rounds
    to 8-bit pixels, resizes each picture to the target with `resize_image`, and encodes again.
    """
    f = pipe.vae.downsampling_factor
    if is_latent(upscaler):
        return crop_latent(latent_upscale(z, (target.height // f, target.width // f), upscaler), target)
    pictures = [resize_image(0, image, target.width, target.height, upscaler)
                for image in to_pil(pipe.decode_latents(z).cpu())]
    return crop_latent(encode(pipe, as_tensor(pictures)), target)  # (B, 3, H, W) -> (B, C, H/f, W/f)


@torch.no_grad()
def encode(pipe, images: torch.Tensor) -> torch.Tensor:
    """Pictures (B, 3, H, W) in [0, 1] -> scaled latents (B, C, H // f, W // f), the posterior's mean.

    The VAE is convolutional, so it encodes any size; the last H mod f rows (and columns) are left out,
    so that the latent has the size Stable Diffusion's VAE gives (its downsampling rounds down).
    """
    f = pipe.vae.downsampling_factor
    h, w = images.shape[-2] // f * f, images.shape[-1] // f * f
    if not (h and w):
        raise ValueError(f"a picture must be at least {f}x{f} pixels to encode, got {tuple(images.shape[-2:])}")
    x = check_images(images[..., :h, :w].to(pipe.device) * 2 - 1, size=None)  # (B, 3, h, w)
    return DiagonalGaussian(pipe.vae.encoder(x)).mean * pipe.scale_factor


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL pictures of one size -> (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 255 for i in images])) \
        .permute(0, 3, 1, 2)
