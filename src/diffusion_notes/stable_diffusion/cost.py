"""What working in latent space saves: one UNet step on 8x8x4 latents against one on 32x32x3 pixels.

Latent diffusion's argument (Rombach et al. 2022, section 3) is about cost: the
diffusion model, which runs many times per image, should work on a small latent,
and the autoencoder, which runs once, should deal with the pixels. This module
measures that claim in one run, at equal UNet width: the same UNetConfig for
both models except in_channels/out_channels (3 for pixels) and sample_size (32).
The pixel model then meets its attention layers at 32x32 = 1024 positions
instead of 8x8 = 64, which is where most of the difference comes from.

Timed, with random weights and inputs (the cost does not depend on the values):
- a training step: forward, backward and an AdamW step at batch B, with a
  random (B, 77, D_c) text context;
- a sampling step: one guided call (a batch of 2B, conditional and
  unconditional together) without gradients;
- the decoder: AutoencoderKL.decode of B latents, which a latent sampling run
  pays once; spread over its `sampling_steps` steps it is added to the latent
  sampling step (and reported on its own);
- the encoder: AutoencoderKL.encode of B images, which a latent training step
  pays when latents are not precomputed (ldm.ldm_batch encodes on the fly).

Each time is the fastest of `repeats` runs after `warmup` runs: another process on a shared
machine only ever adds time, so the fastest run is the one it disturbed least. Latent and pixel
runs alternate, so a busy moment hits both.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from diffusion_notes.foundations.guidance import guided_eps
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.stable_diffusion.vae import AutoencoderKL, VAEConfig


def pixel_config(config: UNetConfig) -> UNetConfig:
    """The pixel-space twin of a latent UNetConfig: 3 channels in and out, 32x32, same widths and attention."""
    return replace(config, in_channels=3, out_channels=3, sample_size=32)


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def unet_flops(config: UNetConfig, batch_size: int = 1) -> dict:
    """Floating-point operations of one forward pass, counted by torch's FlopCounterMode, by kind of layer.

    Returns {"convolution", "linear", "attention", "total"} (a multiply-add counts as 2).
    "attention" is the two products Q K^T and (weights) V of every attention
    layer, self and cross: the part that grows with the square of the positions.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet(config)
    x, t, context = _inputs(config, batch_size, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(x, t, context, return_attention=True)  # explicit matmuls, so the counter sees the attention
    counts = {str(op).split(".")[1]: float(n) for op, n in counter.get_flop_counts()["Global"].items()}
    out = {"convolution": counts.get("convolution", 0.0),
           "linear": counts.get("addmm", 0.0) + counts.get("mm", 0.0),
           "attention": counts.get("bmm", 0.0)}
    out["total"] = float(counter.get_total_flops())
    return out


def _inputs(config: UNetConfig, batch_size: int, generator: torch.Generator) -> tuple:
    x = torch.randn(batch_size, config.in_channels, config.sample_size, config.sample_size, generator=generator)
    t = torch.randint(0, 1000, (batch_size,), generator=generator)  # (B,)
    context = torch.randn(batch_size, 77, config.context_dim, generator=generator)  # (B, 77, D_c)
    return x, t, context


def _train_step(model: UNet, optimizer: torch.optim.Optimizer, x, t, context):
    """One optimisation step of the noise-prediction loss (the target is random: only the cost matters)."""
    def step():
        loss = (model(x, t, context) - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _sample_step(model: UNet, x, t, context):
    """One guided model call at batch 2B: what a sampling step costs (the sampler's arithmetic is negligible)."""
    uncond = torch.zeros_like(context)

    @torch.no_grad()
    def step():
        guided_eps(model, x, t, context, uncond, guidance_scale=4.0)
    return step


def _fastest_times(fns: dict, repeats: int, warmup: int) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def latent_vs_pixel_cost(config: UNetConfig | None = None, batch_size: int = 16, repeats: int = 3,
                         warmup: int = 1, sampling_steps: int = 25, sampling: bool = True,
                         vae_config: VAEConfig | None = None, seed: int = 0) -> dict:
    """Median seconds per training step and per sampling step, latent against pixel, and their ratios.

    config: the latent UNet's config (default UNetConfig(), the shipped model's);
    the pixel model is `pixel_config(config)`. sampling=False times training only.
    Returns a dict of floats: parameter counts, "latent_train_s", "pixel_train_s",
    "train_ratio" (pixel / latent), "encode_s", "train_ratio_with_encode", and
    with sampling "latent_sample_s", "pixel_sample_s", "decode_s",
    "decode_per_step_s" (decode_s / sampling_steps), "latent_sample_with_decode_s",
    "sample_ratio" (without the decoder) and "sample_ratio_with_decode".
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or sampling_steps < 1:
        raise ValueError(f"need batch_size >= 1, repeats >= 1, warmup >= 0 and sampling_steps >= 1, got "
                         f"{batch_size}, {repeats}, {warmup} and {sampling_steps}")
    latent_config = config or UNetConfig()
    configs = {"latent": latent_config, "pixel": pixel_config(latent_config)}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    models = {name: UNet(c) for name, c in configs.items()}
    vae = AutoencoderKL(vae_config or VAEConfig()).requires_grad_(False)
    inputs = {name: _inputs(c, batch_size, generator) for name, c in configs.items()}
    out = {f"{name}_parameters": float(n_parameters(m)) for name, m in models.items()}
    out.update(decoder_parameters=float(n_parameters(vae.decoder)), batch_size=float(batch_size),
               sampling_steps=float(sampling_steps))

    train = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train[f"{name}_train_s"] = _train_step(model, optimizer, *inputs[name])
    images = torch.rand(batch_size, 3, 32, 32, generator=generator) * 2 - 1  # (B, 3, 32, 32)
    train["encode_s"] = torch.no_grad()(lambda: vae.encode(images).sample(generator))
    out.update(_fastest_times(train, repeats, warmup))
    out["train_ratio"] = out["pixel_train_s"] / out["latent_train_s"]
    out["train_ratio_with_encode"] = out["pixel_train_s"] / (out["latent_train_s"] + out["encode_s"])
    if not sampling:
        return out

    for model in models.values():
        model.eval()
    sample = {f"{name}_sample_s": _sample_step(model, *inputs[name]) for name, model in models.items()}
    z = inputs["latent"][0]  # (B, 4, 8, 8)
    sample["decode_s"] = torch.no_grad()(lambda: vae.decode(z))
    out.update(_fastest_times(sample, repeats, warmup))
    out["decode_per_step_s"] = out["decode_s"] / sampling_steps
    out["latent_sample_with_decode_s"] = out["latent_sample_s"] + out["decode_per_step_s"]
    out["sample_ratio"] = out["pixel_sample_s"] / out["latent_sample_s"]
    out["sample_ratio_with_decode"] = out["pixel_sample_s"] / out["latent_sample_with_decode_s"]
    return out
