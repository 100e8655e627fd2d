r"""Karras' noise levels: sigma at any timestep, Karras' spacing of them, and back to the DDPM scale.

    sigma       \sigma_t      sqrt((1 - alpha_bar) / alpha_bar), the noise level of x_t / sqrt(alpha_bar)
    x_sigma     x / s(t)      the variance-exploding sample x_t / sqrt(alpha_bar) = x0 + sigma eps

The sigma-based samplers (Euler, Euler a, DPM++ 2M), their grids (`grids`), guidance
and the oracle read sigma from here, float64 throughout.
"""

from __future__ import annotations

import torch

from diffusion_notes.foundations.schedules import Schedule


def sigma_at(t, schedule: Schedule) -> torch.Tensor:
    """Karras' sigma at a (possibly fractional) timestep, as float64: linear in t between steps.

    t = -1 means "after the last step", sigma = 0. Fractional t is
    interpolated linearly, as diffusers' Euler schedulers do (np.interp).
    """
    sigmas = schedule.sigmas()  # (T,)
    t = torch.as_tensor(t, dtype=torch.float64)
    T = schedule.num_train_timesteps
    if (t < -1).any() or (t > T - 1).any() or ((t < 0) & (t != -1)).any():
        raise ValueError(f"t must be -1 or in [0, {T - 1}], got {t.tolist()}")
    lo = t.clamp(min=0).floor().long()
    hi = (lo + 1).clamp(max=T - 1)
    w = t.clamp(min=0) - lo
    sigma = (1 - w) * sigmas[lo] + w * sigmas[hi]
    return torch.where(t == -1, torch.zeros_like(sigma), sigma)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    r"""n noise levels from sigma_max down to sigma_min, spaced evenly in sigma^(1/rho), float64.

    $$\sigma_i = \left(\sigma_{\max}^{1/\rho} + \tfrac{i}{n-1}\left(\sigma_{\min}^{1/\rho}
               - \sigma_{\max}^{1/\rho}\right)\right)^\rho$$

    Book: eq-karras-sigmas
    Paper: Karras et al. 2022 (EDM), eq. 5 (rho = 7)
    """
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)  # (n,)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho  # (n,)


def vp_scale(sigma):
    """sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2): x_t = x_sigma * vp_scale(sigma)."""
    return (1 + sigma**2).rsqrt()
