"""The unCLIP decoder P(x | z_i, y), its GLIDE baseline, and the upsampler.

DALL-E 2's decoder (Ramesh et al. 2022, section 2.1) is GLIDE (Nichol et al.
2022) with two changes that let it read a CLIP image embedding z_i:

1. z_i is projected and **added to the timestep embedding**, next to the
   projection of the pooled caption embedding that GLIDE already adds there;
2. z_i is projected into **four extra tokens** appended to the caption's token
   sequence, which every attention layer reads as context.

For classifier-free guidance, z_i is set to zero 10% of the time and the
caption is dropped 50% of the time. The GLIDE baseline is the same network
without either change (text only), trained for the same number of steps.

The cascade: the decoder works at 16x16, and an upsampler diffusion model
takes its output to 32x32, conditioned on the low-resolution image (upsampled
bilinearly and concatenated to x_t as three more channels) after adding noise
to it, so it learns to repair a base model's mistakes instead of copying them.
It generates the residual between the picture and the bilinear enlargement.

Notation: B batch, E embedding width, N caption tokens, D text width, C_0 first UNet width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.guidance import drop_condition
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.rng import per_item_rand, per_item_randn
from diffusion_notes.unclip.conditions import (
    BASE_SIZE,
    N_TOKENS,
    TextConditions,
    downsample,
    drop_text,
    embed_scale,
    upsample,
)

P_DROP_IMAGE = 0.1  # z_i zeroed (DALL-E 2)
P_DROP_TEXT = 0.5  # caption dropped (DALL-E 2's decoder)
P_DROP_TEXT_GLIDE = 0.2  # GLIDE drops its caption 20% of the time
UPSAMPLER_AUG_MAX = 0.2  # training: noise of std U[0, 0.2] added to the low-resolution image
UPSAMPLER_AUG = 0.1  # sampling: the noise added to the base model's output


SPACES = ("pixel", "latent")


def decoder_schedule(config: DecoderConfig | None = None):
    """The decoder's noise schedule, T = 1000.

    Pixel space: cosine, as GLIDE's and DALL-E 2's decoders. Latent space: Stable Diffusion's
    scaled_linear (0.00085 to 0.012), the schedule of the latent UNet the latent decoder starts from.
    """
    if config is not None and config.space == "latent":
        return make_schedule("scaled_linear", 1000)  # its default betas are Stable Diffusion v1's
    return make_schedule("cosine", 1000)


@dataclass(frozen=True)
class DecoderConfig:
    image_embedding: bool = True  # False: the GLIDE baseline, text only
    space: str = "pixel"  # "latent": x is the autoencoder's (4, 8, 8) latent, as in Stable unCLIP and Karlo
    in_channels: int = 3  # 4 in latent space
    embed_dim: int = 64  # E
    text_width: int = 128  # D
    n_tokens: int = N_TOKENS
    n_image_tokens: int = 4  # DALL-E 2: four extra context tokens
    sample_size: int = BASE_SIZE
    channels: tuple[int, ...] = (32, 64, 128)
    attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    heads: int = 4
    norm_groups: int = 8  # 4 to 16 channels per group: one channel per group would hide the picture's colour
    p_drop_image: float = P_DROP_IMAGE
    p_drop_text: float = P_DROP_TEXT
    scale_shift_norm: bool = True  # GLIDE's AdaGN; the latent decoder keeps the latent UNet's additive embedding

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {self.space!r}")


def latent_decoder_config(image_embedding: bool = True) -> DecoderConfig:
    """The decoder in the autoencoder's latent space: the shipped latent UNet's shape (8x8x4, widths 64 and 128,
    attention at 8x8 and in the middle), plus the unCLIP conditioning (or GLIDE's pooled caption only)."""
    return DecoderConfig(image_embedding=image_embedding, space="latent", in_channels=4, sample_size=8,
                         channels=(64, 128), attention=(True, False), norm_groups=32, scale_shift_norm=False,
                         p_drop_text=P_DROP_TEXT if image_embedding else P_DROP_TEXT_GLIDE)


class Decoder(nn.Module):
    """eps_theta(x_t, t, z_i, y) at 16x16: a text-conditional UNet, plus z_i when config.image_embedding.

    cond is a dict {"z_t" (B, E), "tokens" (B, N, D), "mask" (B, N)} and, for unCLIP, "z_i" (B, E),
    embeddings unit length (or zero for a dropped z_i).

    Paper: Ramesh et al. 2022, section 2.1; Nichol et al. 2022 (GLIDE), section 4
    """

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        self.config = c = config or DecoderConfig()
        self.unet = UNet(UNetConfig(in_channels=c.in_channels, out_channels=c.in_channels, sample_size=c.sample_size,
                                    channels=c.channels, layers_per_block=c.layers_per_block, attention=c.attention,
                                    heads=c.heads, context_dim=c.text_width, scale_shift_norm=c.scale_shift_norm,
                                    norm_groups=c.norm_groups))
        temb_dim = self.unet.temb_dim
        self.text_embedding = nn.Linear(c.embed_dim, temb_dim)  # GLIDE: the pooled caption joins the timestep embedding
        if c.image_embedding:
            self.image_embedding = nn.Linear(c.embed_dim, temb_dim)  # change 1: z_i added to the timestep embedding
            self.image_tokens = nn.Linear(c.embed_dim, c.n_image_tokens * c.text_width)  # change 2: four extra tokens

    @torch.no_grad()
    def warm_start(self, unet: nn.Module) -> Decoder:
        """Copy a trained text-conditional UNet (the shipped latent UNet) into self.unet and zero the projections
        of z_t and z_i, so training starts from that UNet's predictions (how Stable unCLIP began from SD 2.1)."""
        self.unet.load_state_dict(unet.state_dict())
        for name in ("text_embedding", "image_embedding", "image_tokens"):
            layer = getattr(self, name, None)
            if layer is not None:
                layer.weight.zero_()
                layer.bias.zero_()
        return self

    def condition(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, 4 C_0) added to the timestep embedding, context (B, N [+ 4], D) for cross-attention)."""
        c, s = self.config, embed_scale(self.config.embed_dim)
        emb = self.text_embedding(cond["z_t"] * s)  # (B, 4 C_0)
        context = cond["tokens"]  # (B, N, D)
        if c.image_embedding:
            z_i = cond["z_i"] * s  # (B, E)
            emb = emb + self.image_embedding(z_i)
            extra = self.image_tokens(z_i).view(-1, c.n_image_tokens, c.text_width)  # (B, 4, D)
            context = torch.cat([context, extra], dim=1)  # (B, N + 4, D)
        return emb, context

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict, return_attention: bool = False):
        """x_t (B, C, s, s), t (B,), cond -> eps (B, C, s, s) [, attention maps]; C, s = 3, 16 or 4, 8 (latent)."""
        if self.config.image_embedding and "z_i" not in cond:
            raise ValueError("the unCLIP decoder needs cond['z_i'], a (B, E) CLIP image embedding")
        emb, context = self.condition(cond)
        return self.unet(x, t, context, return_attention, emb=emb)


def drop_image_embedding(z_i: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set each row of z_i (B, E) to zero with probability p (DALL-E 2's decoder, p = 0.1)."""
    return drop_condition(z_i, p, torch.zeros(z_i.shape[1:], dtype=z_i.dtype), generator)


def decoder_loss(model: Decoder, batch: dict, generator: torch.Generator | None = None, *,
                 null: TextConditions) -> torch.Tensor:
    """The simple loss at 16x16 with the caption dropped (p_drop_text) and, for unCLIP, z_i zeroed (p_drop_image).

    A dropped caption becomes `null`, the empty caption's conditions from the frozen CLIP. A latent decoder
    reads batch["z0"] (B, 4, 8, 8), the images' latents, which the caller encodes with its frozen autoencoder.

    Book: eq-decoder-loss
    """
    device, c = next(model.parameters()).device, model.config
    if c.space == "latent":
        if "z0" not in batch:
            raise ValueError("a latent decoder trains on batch['z0'], the (B, 4, 8, 8) latents of the images")
        x0 = batch["z0"].to(device)  # (B, 4, 8, 8), about unit variance
    else:
        x0 = downsample(batch["images"].to(device), c.sample_size)  # (B, 3, 16, 16) in [-1, 1]
    cond = drop_text({k: batch[k].to(device) for k in ("z_t", "tokens", "mask")}, c.p_drop_text, null, generator)
    if c.image_embedding:
        cond["z_i"] = drop_image_embedding(batch["z_i"].to(device), c.p_drop_image, generator)
    return noise_prediction_loss(model, x0, decoder_schedule(c), generator=generator, cond=cond)


@dataclass(frozen=True)
class UpsamplerConfig:
    sample_size: int = 32
    low_size: int = BASE_SIZE
    channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    norm_groups: int = 4
    aug_max: float = UPSAMPLER_AUG_MAX


class Upsampler(nn.Module):
    """eps_theta(x_t, t, x_low): a UNet without attention that reads x_t and the upsampled low-res image (6 channels).

    Like DALL-E 2's upsamplers it sees neither the caption nor z_i.
    Paper: Ramesh et al. 2022, section 2.1 and Appendix C; Ho et al. 2022 (cascaded diffusion)
    """

    def __init__(self, config: UpsamplerConfig | None = None):
        super().__init__()
        self.config = c = config or UpsamplerConfig()
        self.unet = UNet(UNetConfig(in_channels=6, out_channels=3, sample_size=c.sample_size, channels=c.channels,
                                    layers_per_block=c.layers_per_block, attention=(False,) * len(c.channels),
                                    mid_attention=False, scale_shift_norm=True,
                                    norm_groups=c.norm_groups))

    def forward(self, x: torch.Tensor, t: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """x_t (B, 3, 32, 32), t (B,), low (B, 3, 32, 32) the noise-augmented, upsampled base image -> eps."""
        if low.shape != x.shape:
            raise ValueError(f"low must be the upsampled low-resolution image, shaped like x {tuple(x.shape)}, "
                             f"got {tuple(low.shape)}")
        return self.unet(torch.cat([x, low], dim=1), t)  # (B, 3, 32, 32)


def augment_low_res(low: torch.Tensor, sigma, generator: torch.Generator | None = None) -> torch.Tensor:
    """Upsample (B, 3, h, w) to 32x32 and add Gaussian noise of std sigma (a float or a (B,) tensor)."""
    up = upsample(low)  # (B, 3, 32, 32)
    sigma = torch.as_tensor(sigma, dtype=up.dtype, device=up.device).reshape(-1, 1, 1, 1)
    return up + sigma * per_item_randn(up.shape, generator, device=up.device, dtype=up.dtype)


def upsampler_loss(model: Upsampler, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """The simple loss on the residual r = x_0 - up(low) at 32x32, conditioned on the low-res image plus noise of std ~ U[0, aug_max].

    The upsampler diffuses only what bilinear enlargement misses (the residual, as SRDiff does), so
    the picture's layout and colours come from the low-resolution image and the model adds the edges.
    Book: eq-upsampler-loss
    """
    device, c = next(model.parameters()).device, model.config
    x0 = batch["images"].to(device)  # (B, 3, 32, 32)
    low = downsample(x0, c.low_size)  # (B, 3, 16, 16)
    sigma = c.aug_max * per_item_rand(len(x0), generator).to(device)  # (B,)
    cond = augment_low_res(low, sigma, generator)
    return noise_prediction_loss(model, x0 - upsample(low), decoder_schedule(), generator=generator, cond=cond)


def slerp(a: torch.Tensor, b: torch.Tensor, theta) -> torch.Tensor:
    r"""Spherical interpolation between unit vectors a and b (..., E) at fraction theta in [0, 1].

    $$\mathrm{slerp}(a, b, \theta) = \frac{\sin((1-\theta)\,\Omega)}{\sin\Omega}\,a
        + \frac{\sin(\theta\,\Omega)}{\sin\Omega}\,b,\qquad \cos\Omega = a \cdot b$$

    Book: eq-slerp
    Paper: Shoemake 1985; Ramesh et al. 2022, section 3.2
    """
    theta = torch.as_tensor(theta, dtype=a.dtype, device=a.device)
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)  # (..., 1)
    omega = torch.acos(cos)
    theta = theta.reshape(-1, *([1] * (a.ndim - 1))) if theta.ndim else theta
    return (torch.sin((1 - theta) * omega) * a + torch.sin(theta * omega) * b) / torch.sin(omega)
