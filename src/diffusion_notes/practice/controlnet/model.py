"""ControlNet: a trainable copy of the UNet's encoder that steers a frozen UNet (Zhang et al. 2023).

The base UNet eps_theta(z_t, t, c_text) stays frozen. A copy of its input
convolution, down path and middle block (same shapes, initialised from the base
weights) reads the noisy latent plus a condition image c_f (an outline, a mask),
encoded to the latent's size by a small convolutional network E. Each of the
copy's skip features, and its middle output, goes through a 1x1 convolution
Z whose weight and bias start at zero, and is added to the matching skip
connection (and to the middle output) of the frozen UNet:

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)      (paper, eq. 2)

Because every Z starts at zero, the controlled UNet equals the base UNet exactly at
initialisation, and the first gradient steps cannot harm it.

Notation: B batch, C_0 the UNet's first width, h x w the latent (8 x 8), H x W the
condition image (32 x 32), K the number of skip connections (4 for the book's UNet).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusion_notes.nn.resnet import ResBlock
from diffusion_notes.nn.unet import UNet, UNetConfig, run_encoder, time_features


@dataclass(frozen=True)
class ControlNetConfig:
    # The base UNet's numbers: the copy has exactly its encoder's shapes (UNetConfig's defaults).
    in_channels: int = 4
    sample_size: int = 8
    channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (True, False)
    heads: int = 4
    context_dim: int = 128
    scale_shift_norm: bool = False
    norm_groups: int = 32
    mid_attention: bool = True
    # The condition image and its encoder E, in diffusers' ControlNetConditioningEmbedding layout: conv_in, then
    # per step of widths a 3x3 conv and a stride-2 3x3 conv to the next width, each followed by SiLU, then conv_out.
    condition_channels: int = 3  # RGB condition images, values in [0, 1]
    condition_size: int = 32  # H = W of the condition image: sample_size times 2 ** (len(hint_channels) - 1)
    hint_channels: tuple[int, ...] = (16, 32, 64)

    def unet_config(self) -> UNetConfig:
        """The UNetConfig whose encoder this ControlNet copies."""
        return UNetConfig(in_channels=self.in_channels, out_channels=self.in_channels, sample_size=self.sample_size,
                          channels=self.channels, layers_per_block=self.layers_per_block, attention=self.attention,
                          heads=self.heads, context_dim=self.context_dim, scale_shift_norm=self.scale_shift_norm,
                          norm_groups=self.norm_groups, mid_attention=self.mid_attention)


def config_for(unet_config: UNetConfig, **condition) -> ControlNetConfig:
    """A ControlNetConfig that copies `unet_config`'s encoder (condition settings as keyword arguments)."""
    keep = ("in_channels", "sample_size", "channels", "layers_per_block", "attention", "heads", "context_dim",
            "scale_shift_norm", "norm_groups", "mid_attention")
    return ControlNetConfig(**{k: getattr(unet_config, k) for k in keep}, **condition)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero: the paper's "zero convolution" (Zhang et al. 2023, section 3.1)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ConditionEmbedding(nn.Module):
    """E followed by its zero convolution: (B, 3, H, W) -> (B, C_0, h, w), diffusers' ControlNetConditioningEmbedding.

    conv_in (3 -> w_0), then for each pair of widths (w_i, w_{i+1}) a 3x3 conv at w_i and a stride-2 3x3 conv to
    w_{i+1}, every conv followed by SiLU, and conv_out (w_last -> C_0), a 3x3 conv that starts at zero.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks += [nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)]
        self.conv_out = zero_module(nn.Conv2d(widths[-1], out_channels, 3, padding=1))  # Z(.; Theta_z1)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.conv_in(condition))  # (B, w_0, H, W)
        for conv in self.blocks:
            h = nn.functional.silu(conv(h))  # halves H, W at each stride-2 conv
        return self.conv_out(h)  # (B, C_0, h, w)


class ControlNet(nn.Module):
    """The trainable copy: (z_t, t, c_text, c_f) -> K skip residuals and one middle residual.

    Paper: Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models", eq. 2, Fig. 3
    """

    def __init__(self, config: ControlNetConfig | None = None):
        super().__init__()
        self.config = c = config or ControlNetConfig()
        if c.condition_size != c.sample_size * 2 ** (len(c.hint_channels) - 1):
            raise ValueError(f"condition_size must be sample_size * 2 ** (len(hint_channels) - 1) = "
                             f"{c.sample_size * 2 ** (len(c.hint_channels) - 1)}, got {c.condition_size}")
        base = UNet(c.unet_config())  # built only to copy its encoder's layers
        self.time_embed, self.conv_in, self.down, self.mid = base.time_embed, base.conv_in, base.down, base.mid
        self.cond_embedding = ConditionEmbedding(c.condition_channels, c.hint_channels, c.channels[0])  # Z(E(c_f))
        widths = [c.channels[0]] + [self._width(layers) for layers in self.down]
        self.zero_convs = nn.ModuleList([zero_module(nn.Conv2d(w, w, 1)) for w in widths])  # Z(.; Theta_z2), K of them
        self.mid_out = zero_module(nn.Conv2d(c.channels[-1], c.channels[-1], 1))

    @staticmethod
    def _width(layers: nn.ModuleList) -> int:
        first = layers[0]
        return first.conv1.out_channels if isinstance(first, ResBlock) else first.conv.out_channels  # Downsample

    @classmethod
    def from_unet(cls, unet: UNet, config: ControlNetConfig | None = None) -> ControlNet:
        """A ControlNet whose copy starts from `unet`'s encoder weights (Theta_c = Theta), as the paper trains it."""
        config = config or config_for(unet.config)
        return cls(config).to(next(unet.parameters()).device).copy_encoder_from(unet)

    @torch.no_grad()
    def copy_encoder_from(self, unet: UNet) -> ControlNet:
        """Set the copy's weights to `unet`'s input convolution, down path and middle block; the rest unchanged."""
        if self.config.unet_config() != _encoder_fields(unet.config):
            raise ValueError(f"the ControlNet config {self.config} does not copy the UNet config {unet.config}")
        prefixes = ("time_embed.", "conv_in.", "down.", "mid.")
        state = {k: v for k, v in unet.state_dict().items() if k.startswith(prefixes)}
        missing = self.load_state_dict(state, strict=False).missing_keys
        if any(k.startswith(prefixes) for k in missing):
            raise ValueError(f"the UNet lacks encoder weights the ControlNet needs, first {missing[0]!r}")
        return self

    def check_condition(self, image: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Raise a ValueError unless `image` is (B, 3, 32, 32) float in [0, 1]; return it."""
        c = self.config
        want = (c.condition_channels, c.condition_size, c.condition_size)
        if not torch.is_tensor(image) or image.ndim != 4 or tuple(image.shape[1:]) != want:
            got = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"the condition image must have shape (B, {', '.join(map(str, want))}) "
                             f"({c.condition_channels} channels, {c.condition_size}x{c.condition_size} pixels), got {got}")
        if not image.is_floating_point() or image.min() < 0 or image.max() > 1 or torch.isnan(image).any():
            raise ValueError("the condition image must be float with values in [0, 1] (black background, "
                             f"white strokes), got {image.dtype} in [{float(image.min()):.3g}, {float(image.max()):.3g}]")
        if batch_size is not None and image.shape[0] not in (1, batch_size):
            raise ValueError(f"give one condition image or {batch_size}, got {image.shape[0]}")
        return image

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                condition: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (B, 4, h, w), t (B,), context (B, M, D_c), condition (B, 3, H, W) in [0, 1] ->
        ([K residuals, the skips' shapes], middle residual (B, C_last, h/2, w/2)).

        Paper: Zhang et al. 2023, eq. 2
        """
        self.check_condition(condition, x.shape[0])
        condition = condition.expand(x.shape[0], -1, -1, -1).to(x)  # (B, 3, H, W)
        temb = time_features(self.time_embed, t, x, self.config.channels[0])  # (B, 4 C_0)
        h = self.conv_in(x) + self.cond_embedding(condition)  # (B, C_0, h, w): x + Z(E(c_f))
        skips, h = run_encoder(self.down, self.mid, h, temb, context)  # K skips, (B, C_last, h', w')
        return [z(s) for z, s in zip(self.zero_convs, skips)], self.mid_out(h)


def _encoder_fields(config: UNetConfig) -> UNetConfig:
    """`config` with the fields the encoder does not depend on set to the ControlNet's defaults."""
    return UNetConfig(**{**config.__dict__, "out_channels": config.in_channels, "dropout": 0.0})


def guess_mode_scales(n: int) -> torch.Tensor:
    """(n + 1,) weights from 0.1 (the shallowest residual) to 1 (the middle): torch.logspace(-1, 0, n + 1).

    Guess mode (diffusers' ControlNetModel, guess_mode=True) lets the deep features speak louder.
    """
    return torch.logspace(-1, 0, n + 1)


def controlnet_residuals(controlnet: ControlNet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                         condition: torch.Tensor, scale=1.0,
                         guess_mode: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The ControlNet's K skip residuals and middle residual times `scale` ((B,) or a number), for `UNet.forward`.

    In guess mode each residual is also weighted by its depth (`guess_mode_scales`).
    """
    down, mid = controlnet(x, t, context, condition)
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    scale = scale.reshape(-1, 1, 1, 1) if scale.ndim else scale  # (B, 1, 1, 1) or a scalar
    weights = guess_mode_scales(len(down)).tolist() if guess_mode else [1.0] * (len(down) + 1)
    return [r * (w * scale) for r, w in zip(down, weights)], mid * (weights[-1] * scale)


def controlled_eps(unet: UNet, controlnet: ControlNet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                   condition: torch.Tensor, scale=1.0, guess_mode: bool = False) -> torch.Tensor:
    """eps of the controlled UNet: the ControlNet's residuals times `scale` ((B,) or a number) into the frozen UNet.

    Book: eq-controlnet
    Paper: Zhang et al. 2023, eq. 2 and section 4 (guess mode: the residuals weighted by `guess_mode_scales`)
    """
    down, mid = controlnet_residuals(controlnet, x, t, context, condition, scale, guess_mode)
    return unet(x, t, context, down_residuals=down, mid_residual=mid)
