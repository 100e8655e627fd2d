"""Convolutional blocks shared by the autoencoder and the UNets.

ResBlock follows the DDPM / Stable Diffusion layout (Ho et al. 2020, Appendix B;
Rombach et al. 2022): GroupNorm, SiLU, 3x3 conv, then the timestep embedding
added per channel, GroupNorm, SiLU, dropout, 3x3 conv, plus a skip connection
(a 1x1 conv where the channel count changes).

Notation: B batch, C channels, H x W spatial size, E timestep-embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups (or max_groups), or fewer when the channel count is small (it must divide C).

    A group of one channel normalises away that channel's mean over the picture; if every group has one
    channel, nothing after the first layer can tell a dark picture from a bright one. Small UNets
    that must predict a picture's overall colour therefore use fewer groups (max_groups = C / 4).
    """
    groups = min(max_groups, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + F(x, temb): two 3x3 convs with GroupNorm and SiLU; temb (B, E) shifts the channels if given.

    With scale_shift=True the embedding instead scales and shifts the normalised features
    (Dhariwal & Nichol 2021, "AdaGN"; GLIDE's and DALL-E 2's decoders).

    Paper: He et al. 2016 (residual blocks); Ho et al. 2020, Appendix B (timestep embedding added per block).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_dim: int | None = None,
                 dropout: float = 0.0, scale_shift: bool = False, norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, (2 if scale_shift else 1) * out_channels) if temb_dim else None
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        if self.temb_proj is not None and temb is None:
            raise ValueError("this ResBlock was built with a timestep embedding; pass temb (B, E)")
        if self.temb_proj is None:
            h = self.norm2(h)
        elif self.scale_shift:  # GLIDE / ADM: norm2(h) * (1 + scale) + shift, which no GroupNorm can undo
            scale, shift = self.temb_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
            h = self.norm2(h) * (1 + scale) + shift
        else:  # DDPM / SD: add before norm2 (a GroupNorm removes each group's mean of the shift)
            h = self.norm2(h + self.temb_proj(F.silu(temb))[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
