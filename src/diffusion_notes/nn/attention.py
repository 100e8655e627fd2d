"""Attention for the UNet: scaled dot-product attention, cross-attention, and the spatial Transformer.

Latent diffusion lets text steer the image through cross-attention: the queries
come from the image features, the keys and values from the text encoder's token
states (Rombach et al. 2022, section 3.3):

    Q = phi(z_t) W_Q,   K = tau(y) W_K,   V = tau(y) W_V,
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

so each of the h x w latent positions takes a weighted mix of the words'
values, with weights saying how much that position "looks at" each word.

Notation: B batch, L = h w image positions, M text tokens (77), D width,
H heads, d = D / H head width, D_c text width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import group_norm


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""softmax(Q K^T / sqrt(d)) V, and the attention weights.

    q (..., L, d), k (..., M, d), v (..., M, d) -> out (..., L, d), weights (..., L, M);
    each row of weights sums to 1. Equals torch.nn.functional.scaled_dot_product_attention.

    Book: eq-cross-attention
    Paper: Vaswani et al. 2017, eq. 1; Rombach et al. 2022, section 3.3
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L, M)
    weights = scores.softmax(dim=-1)  # (..., L, M)
    return weights @ v, weights  # (..., L, d), (..., L, M)


class CrossAttention(nn.Module):
    """Multi-head attention of x (queries) over context (keys and values); self-attention if context is None.

    Like Stable Diffusion's, the Q, K, V projections have no bias.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"query_dim must be divisible by heads, got {query_dim} and {heads}")
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)  # W_Q
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)  # W_K
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)  # W_V
        self.to_out = nn.Linear(query_dim, query_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        return x.reshape(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, H, L, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, return_attention: bool = False):
        """x (B, L, D), context (B, M, D_c) -> (B, L, D), and the maps (B, H, L, M) if return_attention."""
        context = x if context is None else context
        if context.shape[-1] != self.to_k.in_features:
            raise ValueError(f"context must have width {self.to_k.in_features}, got shape {tuple(context.shape)}")
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        if return_attention:
            out, weights = attention(q, k, v)  # (B, H, L, d), (B, H, L, M)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v), None  # fused kernel, same numbers
        out = self.to_out(out.transpose(1, 2).flatten(2))  # (B, L, D)
        return (out, weights) if return_attention else out


class SpatialTransformer(nn.Module):
    """Self-attention, cross-attention to the text, and an MLP over the h x w positions of a feature map.

    GroupNorm, a 1x1 projection in, then one pre-LN block
        x = x + SelfAttn(LN(x));  x = x + CrossAttn(LN(x), context);  x = x + MLP(LN(x))
    and a 1x1 projection out added to the input (Rombach et al. 2022, Appendix E.2;
    diffusers' Transformer2DModel with one BasicTransformerBlock, GELU instead of GEGLU).
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 4, mlp_ratio: int = 4, norm_groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1, self.attn1 = nn.LayerNorm(channels), CrossAttention(channels, None, heads)
        self.norm2, self.attn2 = nn.LayerNorm(channels), CrossAttention(channels, context_dim, heads)
        self.norm3 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(),
                                 nn.Linear(mlp_ratio * channels, channels))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, return_attention: bool = False):
        """x (B, C, h, w), context (B, M, D_c) -> (B, C, h, w) [, {"self": (B,H,L,L), "cross": (B,H,L,M)}]."""
        B, C, h, w = x.shape
        s = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, L, C)
        maps = {}
        a = self.attn1(self.norm1(s), None, return_attention)
        if return_attention:
            a, maps["self"] = a  # (B, H, L, L)
        s = s + a
        a = self.attn2(self.norm2(s), context, return_attention)
        if return_attention:
            a, maps["cross"] = a  # (B, H, L, M)
        s = s + a
        s = s + self.mlp(self.norm3(s))
        out = x + self.proj_out(s.transpose(1, 2).reshape(B, C, h, w))  # (B, C, h, w)
        return (out, maps) if return_attention else out
