"""Embeddings of the diffusion timestep."""

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of integer (or real) timesteps.

    .. math:: e(t)_k = \cos(t\,\omega_k),\quad e(t)_{D/2+k} = \sin(t\,\omega_k),\quad
              \omega_k = \text{max\_period}^{-k/(D/2)},\quad k = 0, \dots, D/2 - 1

    All the cosines first, then all the sines. The same frequencies as the Transformer's
    positional encoding (Vaswani et al. 2017), used for the timestep by DDPM (Ho et al. 2020,
    Appendix B) and every model after it.

    Book: eq-timestep-embedding
    Paper: Vaswani et al. 2017, section 3.5; Ho et al. 2020, Appendix B

    Args:
        t: (B,) timesteps.
        dim: D, the embedding width (even).
    Returns:
        (B, D) embedding.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even number >= 2, got {dim}")
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of shape (B,), got shape {tuple(t.shape)}")
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)  # (D/2,)
    omega = torch.exp(-math.log(max_period) * k / half)  # (D/2,)
    angles = t.float()[:, None] * omega[None, :]  # (B, D/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, D)
