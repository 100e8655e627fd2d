"""A text-conditional UNet: Stable Diffusion's "image information creator", small.

Down path, middle, up path with skip connections (Ronneberger et al. 2015; Ho et
al. 2020). Every ResBlock gets the timestep embedding; after every ResBlock a
SpatialTransformer lets the feature map attend to itself and, by cross-attention,
to the text encoder's token states (Rombach et al. 2022, Appendix E.2). The
same class with other numbers serves pixel-space models (for the latent-against-
pixel comparison) and the unCLIP decoder.

Notation: B batch, C channels, h x w spatial size, M text tokens, D_c text width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer
from .embeddings import timestep_embedding
from .resnet import Downsample, ResBlock, Upsample, group_norm


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # latent channels (3 for a pixel-space model)
    out_channels: int = 4
    sample_size: int = 8  # h = w of the input (8 for 8x8x4 latents)
    channels: tuple[int, ...] = (64, 128)  # width per resolution; each level but the last halves h and w
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (True, False)  # a SpatialTransformer after each ResBlock of that level (SD v1: none at the lowest resolution)
    heads: int = 4
    context_dim: int = 128  # width of the text token states (CLIP's text width; SD v1: 768)
    dropout: float = 0.0
    scale_shift_norm: bool = False  # the timestep embedding scales and shifts GroupNorm's output (GLIDE, ADM)
    norm_groups: int = 32  # at most this many GroupNorm groups (32 as in SD; small UNets in pixel space use fewer)
    mid_attention: bool = True  # a SpatialTransformer in the middle block (False with no attention anywhere: an unconditional UNet)


def time_features(time_embed: nn.Module, t: torch.Tensor, x: torch.Tensor, width: int) -> torch.Tensor:
    """The timestep embedding every ResBlock reads: t (B,) or a scalar -> (B, 4 C_0) through `time_embed`."""
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    return time_embed(timestep_embedding(t, width))  # (B, 4 C_0)


def run_stage(layers, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
              maps: dict | None = None, name: str = "") -> torch.Tensor:
    """One stage of the UNet: ResBlocks read the timestep embedding, SpatialTransformers the context
    (their attention maps go to `maps[name]` when maps is a dict), Downsample and Upsample h alone."""
    for layer in layers:
        if isinstance(layer, ResBlock):
            h = layer(h, temb)
        elif isinstance(layer, SpatialTransformer):
            if maps is None:
                h = layer(h, context)
            else:
                h, maps[name] = layer(h, context, return_attention=True)
        else:
            h = layer(h)  # Downsample / Upsample
    return h


def run_encoder(down, mid, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
                maps: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The down path and the middle block from conv_in's output h: (K skips, the middle's output).

    The skips are h itself and every down stage's output, K = 1 + len(down); the UNet's up path
    reads them back in reverse (and ControlNet's copy of the encoder runs through here too).
    """
    skips = [h]  # (B, C_0, h, w), ...
    for i, layers in enumerate(down):
        h = run_stage(layers, h, temb, context, maps, f"down.{i}")
        skips.append(h)
    return skips, run_stage(mid, h, temb, context, maps, "mid")  # (B, C_last, h', w')


class UNet(nn.Module):
    """eps_theta(z_t, t, context): predicts the noise in z_t given the timestep and the text token states.

    Paper: Rombach et al. 2022, section 3.3 and Appendix E.2
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = c = config or UNetConfig()
        if len(c.attention) != len(c.channels):
            raise ValueError(f"attention needs one flag per level: {len(c.channels)} levels, got {c.attention}")
        if c.sample_size % 2 ** (len(c.channels) - 1):
            raise ValueError(f"sample_size {c.sample_size} cannot be halved {len(c.channels) - 1} times")
        temb_dim = 4 * c.channels[0]
        self.time_embed = nn.Sequential(nn.Linear(c.channels[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(c.in_channels, c.channels[0], 3, padding=1)

        def block(cin, cout, attn):
            return nn.ModuleList([ResBlock(cin, cout, temb_dim, c.dropout, c.scale_shift_norm, c.norm_groups)]
                                 + ([SpatialTransformer(cout, c.context_dim, c.heads, norm_groups=c.norm_groups)] if attn else []))

        self.down, skips, prev = nn.ModuleList(), [c.channels[0]], c.channels[0]
        for level, (width, attn) in enumerate(zip(c.channels, c.attention)):
            for _ in range(c.layers_per_block):
                self.down.append(block(prev, width, attn))
                prev = width
                skips.append(width)
            if level < len(c.channels) - 1:
                self.down.append(nn.ModuleList([Downsample(width)]))
                skips.append(width)
        self.temb_dim = temb_dim
        self.mid = nn.ModuleList([ResBlock(prev, prev, temb_dim, c.dropout, c.scale_shift_norm, c.norm_groups)]
                                 + ([SpatialTransformer(prev, c.context_dim, c.heads, norm_groups=c.norm_groups)] if c.mid_attention else [])
                                 + [ResBlock(prev, prev, temb_dim, c.dropout, c.scale_shift_norm, c.norm_groups)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(c.channels))):
            width, attn = c.channels[level], c.attention[level]
            for _ in range(c.layers_per_block + 1):
                self.up.append(block(prev + skips.pop(), width, attn))
                prev = width
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(width)]))
        self.norm_out = group_norm(prev, c.norm_groups)
        self.conv_out = nn.Conv2d(prev, c.out_channels, 3, padding=1)

    @property
    def uses_context(self) -> bool:
        """Whether any layer attends to a context (False: the UNet is unconditional, context may be None)."""
        return self.config.mid_attention or any(self.config.attention)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                return_attention: bool = False, emb: torch.Tensor | None = None, *,
                down_residuals: list[torch.Tensor] | None = None, mid_residual: torch.Tensor | None = None):
        r"""x (B, C_in, h, w), t (B,) or a scalar, context (B, M, D_c) -> eps (B, C_out, h, w).

        `emb` (B, 4 C_0), if given, is added to the timestep embedding: how GLIDE adds its
        pooled text and unCLIP its image embedding (Ramesh et al. 2022, section 2.1).

        `down_residuals` (K tensors shaped like the skips) and `mid_residual` (shaped like the
        middle block's output) are added where a ControlNet adds them (Zhang et al. 2023, Fig. 3):

        $$\text{skip}_k \leftarrow \text{skip}_k + r_k, \qquad \text{mid} \leftarrow \text{mid} + r_\text{mid}$$

        as diffusers' down_block_additional_residuals and mid_block_additional_residual do.

        With return_attention also a dict {"down.0": {"self": (B, H, L, L), "cross": (B, H, L, M)}, ...},
        one entry per SpatialTransformer in the order the input meets them.
        """
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must have shape (B, {c.in_channels}, h, w), got {tuple(x.shape)}")
        if not self.uses_context:
            context = None
        elif context is None or context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.context_dim:
            raise ValueError(f"context must have shape ({x.shape[0]}, M, {c.context_dim}), got "
                             f"{None if context is None else tuple(context.shape)}")
        temb = time_features(self.time_embed, t, x, c.channels[0])  # (B, 4 C_0)
        if emb is not None:
            if emb.shape != temb.shape:
                raise ValueError(f"emb must have shape {tuple(temb.shape)}, got {tuple(emb.shape)}")
            temb = temb + emb
        maps = {} if return_attention else None
        skips, h = run_encoder(self.down, self.mid, self.conv_in(x), temb, context, maps)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"need {len(skips)} down residuals, one per skip connection, "
                                 f"got {len(down_residuals)}")
            skips = [s + r for s, r in zip(skips, down_residuals)]  # each (B, C_k, h_k, w_k)
        if mid_residual is not None:
            h = h + mid_residual  # (B, C_last, h', w')
        for i, layers in enumerate(self.up):
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, h, w)
            h = run_stage(layers, h, temb, context, maps, f"up.{i}")
        eps = self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, h, w)
        return (eps, maps) if return_attention else eps
