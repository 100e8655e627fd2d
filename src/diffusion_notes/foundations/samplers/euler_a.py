r"""Euler ancestral ("Euler a"): an Euler step down to sigma_down, then fresh noise up to sigma'.

Its diffusers class: EulerAncestralDiscreteScheduler. Euler's grid (`euler.make_euler_grid`, no
Karras sigmas), Euler's update with sigma_up > 0, and fresh noise at every step (the last
multiplies it by sigma_up = 0, as diffusers draws it there too).
"""

from __future__ import annotations

import torch

from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import (
    StepOutput,
    check_inputs,
    fresh_noise,
    per_example,
    sigma_pair,
    sigma_pairs,
)
from diffusion_notes.foundations.samplers.euler import (
    EulerCoefficients,
    euler_init_noise_scale,
    euler_update,
    make_euler_grid,
)
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.foundations.sigmas import vp_scale


def euler_ancestral_coefficients(sigma, sigma_prev, eta: float = 1.0) -> EulerCoefficients:
    """`euler_ancestral_step`'s sigma_up and sigma_down, elementwise on float64 tensors.

    `eta` scales sigma_up (at most sigma'), as k-diffusion's `get_ancestral_step` does: 0 is Euler.
    """
    sigma_up = (sigma_prev**2 * (sigma**2 - sigma_prev**2) / sigma**2).sqrt()
    if eta != 1:
        sigma_up = torch.minimum(sigma_prev, eta * sigma_up)
    sigma_down = (sigma_prev**2 - sigma_up**2).sqrt()
    return EulerCoefficients(sigma, sigma_down - sigma, vp_scale(sigma), vp_scale(sigma_prev), sigma_up)


def euler_ancestral_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t,
    t_prev,
    schedule: Schedule,
    *,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
    state: dict | None = None,
) -> StepOutput:
    r"""One Euler ancestral step: an Euler step down to sigma_down, then fresh noise up to sigma'.

    $$\sigma_\uparrow = \sqrt{\frac{\sigma'^2(\sigma^2 - \sigma'^2)}{\sigma^2}}, \quad
      \sigma_\downarrow = \sqrt{\sigma'^2 - \sigma_\uparrow^2}, \quad
      x_{\sigma'} = x_\sigma + (\sigma_\downarrow - \sigma)\frac{x_\sigma - \hat x_0}{\sigma}
                    + \sigma_\uparrow z$$

    in the variance-exploding scale (see `euler.euler_step`), z = `noise` (needed at
    every step; the last step multiplies it by sigma_up = 0). Equals diffusers'
    `EulerAncestralDiscreteScheduler.step` (default config and SD 1.x's betas)
    after dividing its sample by sqrt(1 + sigma^2), given the same noise.

    Book: eq-euler-ancestral
    Paper: Karras et al. 2022 (EDM), Sec. 4 (ancestral sampling); k-diffusion's sample_euler_ancestral
    """
    check_inputs(x_t, eps)
    c = per_example(euler_ancestral_coefficients(*sigma_pair(t, t_prev, schedule, state)), x_t)
    return euler_update(x_t, eps, c, noise=fresh_noise(noise, x_t), clip_x0=clip_x0)


def coefficients(grid: Grid, schedule: Schedule, *, eta_ancestral: float = 1.0, **options) -> EulerCoefficients:
    """`euler_ancestral_coefficients` at every grid point, (n,) float64 each (k-diffusion's eta: `eta_ancestral`)."""
    return euler_ancestral_coefficients(*sigma_pairs(grid, schedule), eta_ancestral)


SAMPLER = register(Sampler(
    name="euler_a",
    make_grid=make_euler_grid,
    coefficients=coefficients,
    update=euler_update,
    default_spacing="linspace",
    diffusers_class="EulerAncestralDiscreteScheduler",
    draws_noise=lambda grid, **options: [True] * len(grid.timesteps),
    init_noise_scale=euler_init_noise_scale,
    webui_names={"Euler a": False},
    step=euler_ancestral_step,
))
