"""A pre-LN Transformer block with causal or full self-attention.

Used by CLIP's text encoder (causal), and meant for the unCLIP prior and the
UNet's attention layers. Each block can hand back its attention maps so a
chapter can draw them.

Pre-LN (Xiong et al. 2020; GPT-2, CLIP) normalises the input of each branch and
keeps the residual stream un-normalised:

    x = x + Attention(LN(x));  x = x + MLP(LN(x))

Notation: B batch, L sequence length, D width, H heads, d = D / H head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_mask(mask: torch.Tensor | None, L: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    if mask.shape[-2:] != (L, L):
        raise ValueError(f"mask must end in ({L}, {L}) for a sequence of length {L}, "
                         f"got shape {tuple(mask.shape)}")
    return mask


class SelfAttention(nn.Module):
    r"""Multi-head self-attention, softmax(Q K^T / sqrt(d)) V per head.

    The input projection holds W_Q, W_K, W_V stacked in that order, the layout of
    ``torch.nn.MultiheadAttention.in_proj_weight``, so a test can compare the two.

    Paper: Vaswani et al. 2017, "Attention is all you need", eq. 1 and section 3.2.2.
    """

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be divisible by heads, got width={width}, heads={heads}")
        self.width, self.heads, self.causal = width, heads, causal
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_attention: bool = False):
        """x: (B, L, D). mask: optional bool, broadcastable to (B, H, L, L), True = may attend.

        Returns y (B, L, D), and the attention maps (B, H, L, L) if return_attention.
        With ``causal=True`` position i attends to positions <= i only.
        """
        B, L, D = x.shape
        mask = _check_mask(mask, L)
        if self.causal and (mask is not None or return_attention):
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # (L, L)
            mask = causal if mask is None else mask & causal
        q, k, v = self.in_proj(x).split(D, dim=-1)  # 3 x (B, L, D)
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, L, d)
        if return_attention:
            scores = q @ k.transpose(-2, -1) / math.sqrt(D // self.heads)  # (B, H, L, L)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attention = scores.softmax(dim=-1)  # (B, H, L, L), rows sum to 1
            y = attention @ v  # (B, H, L, d)
        else:
            attention = None
            is_causal = self.causal and mask is None  # the fused kernel masks by itself
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, L, d)
        y = self.out_proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
        return (y, attention) if return_attention else y


class TransformerBlock(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)); the MLP is Linear-GELU-Linear, 4x wide."""

    def __init__(self, width: int, heads: int, causal: bool = False, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(mlp_ratio * width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_attention: bool = False):
        """x: (B, L, D) -> (B, L, D), and the (B, H, L, L) attention maps if return_attention."""
        a = self.attn(self.ln_1(x), mask, return_attention)
        a, attention = a if return_attention else (a, None)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return (x, attention) if return_attention else x


class Transformer(nn.Module):
    """A stack of `layers` TransformerBlocks of the same width (no final LayerNorm)."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, causal, mlp_ratio)
                                    for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                return_attention: bool = False):
        """x: (B, L, D) -> (B, L, D); with return_attention also a list of (B, H, L, L), one per block."""
        maps = []
        for block in self.blocks:
            if return_attention:
                x, attention = block(x, mask, return_attention=True)
                maps.append(attention)
            else:
                x = block(x, mask)
        return (x, maps) if return_attention else x
