r"""Euler (Karras et al. 2022): the probability-flow ODE stepped in sigma. Its diffusers class: EulerDiscreteScheduler.

In the variance-exploding view x_sigma = x_t / sqrt(alpha_bar) = x0 + sigma eps, which is the
`sample` diffusers' Euler schedulers carry; x_t stays in the DDPM scale here. The grid's
"linspace" timesteps (its default) are fractional and its sigmas interpolated linearly in t;
Karras sigmas (`use_karras_sigmas`) span the grid's first and last sigma. Its coefficients are
computed in float64 from the grid's sigmas, then rounded. Deterministic.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations.grids import Grid, _check_offset, _sigma_grid, make_timesteps
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import (
    StepOutput,
    check_inputs,
    clip,
    per_example,
    sigma_pair,
    sigma_pairs,
)
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.foundations.sigmas import vp_scale


class EulerCoefficients(NamedTuple):
    sigma: torch.Tensor
    dt: torch.Tensor  # sigma' - sigma (Euler) or sigma_down - sigma (Euler ancestral)
    scale: torch.Tensor  # sqrt(alpha_bar) at t ...
    scale_prev: torch.Tensor  # ... and at t_prev
    sigma_up: torch.Tensor  # the fresh noise's standard deviation (0 for Euler)


def euler_coefficients(sigma, sigma_prev) -> EulerCoefficients:
    """`euler_step`'s coefficients, elementwise on float64 tensors."""
    no_noise = torch.zeros_like(sigma)
    return EulerCoefficients(sigma, sigma_prev - sigma, vp_scale(sigma), vp_scale(sigma_prev), no_noise)


def euler_update(x_t, eps, c: EulerCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`euler_step` (or, with sigma_up > 0 and `noise`, `euler_ancestral_step`) given its coefficients."""
    x_sigma = x_t / c.scale  # (B, ...)
    x0_hat = clip(x_sigma - c.sigma * eps, clip_x0)
    derivative = (x_sigma - x0_hat) / c.sigma  # dx_sigma / dsigma
    x_sigma_prev = x_sigma + c.dt * derivative
    if noise is not None:
        x_sigma_prev = x_sigma_prev + c.sigma_up * noise
    return StepOutput(x_sigma_prev * c.scale_prev, x0_hat)


def euler_step(
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
    r"""One Euler step of the probability-flow ODE, in sigma, from t to t_prev.

    In the variance-exploding view x_sigma = x_t / sqrt(alpha_bar) = x0 + sigma eps,
    dx_sigma / dsigma = eps, so

    $$\hat x_0 = x_\sigma - \sigma\,\epsilon_\theta, \qquad
      x_{\sigma'} = x_\sigma + (\sigma' - \sigma)\,\frac{x_\sigma - \hat x_0}{\sigma}$$

    and x_prev = x_{sigma'} sqrt(alpha_bar'), back in the DDPM scale. Deterministic;
    `noise` is ignored. Equals diffusers' `EulerDiscreteScheduler.step` (default
    config, and SD 1.x's scaled_linear betas; with `use_karras_sigmas`) once its
    sample is divided by sqrt(1 + sigma^2), which is what its `scale_model_input` does.
    sigma comes from `state["sigmas"][state["step_index"]]` when `state` holds the grid's
    sigmas, else from the schedule at t and t_prev (`sigma_at`; sigma = 0 at t_prev = -1).

    Book: eq-pf-ode
    Paper: Karras et al. 2022 (EDM), Algorithm 1 without the Heun correction
    """
    check_inputs(x_t, eps)
    c = per_example(euler_coefficients(*sigma_pair(t, t_prev, schedule, state)), x_t)  # (B, 1, ...) each
    return euler_update(x_t, eps, c, clip_x0=clip_x0)


def make_euler_grid(n: int, schedule: Schedule, *, spacing: str, steps_offset: int = 0,
                    use_karras_sigmas: bool = False, **options) -> Grid:
    """EulerDiscreteScheduler's `set_timesteps` (and EulerAncestralDiscreteScheduler's).

    "linspace" is NOT rounded: n fractional timesteps over [0, T - 1], in float32 as diffusers
    makes them; "leading" and "trailing" are `make_timesteps`'. sigma is interpolated linearly in
    t; Karras sigmas span the grid's first and last sigma, and their timesteps stay fractional.
    """
    T = schedule.num_train_timesteps
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    else:
        timesteps = make_timesteps(n, T, spacing, steps_offset).numpy().astype(np.float64)
    _check_offset(timesteps, steps_offset, T)
    timesteps, sigmas = _sigma_grid(timesteps, schedule, use_karras_sigmas, "grid")
    return Grid(torch.from_numpy(timesteps.astype(np.float64).copy()), torch.from_numpy(sigmas.astype(np.float64)))


def euler_init_noise_scale(grid: Grid, spacing: str) -> float:
    """diffusers' Euler schedulers start at x_sigma = sigma_max z ("linspace", "trailing") or
    sqrt(1 + sigma_max^2) z ("leading"): in the DDPM scale, sigma_max / sqrt(1 + sigma_max^2), or 1."""
    if spacing == "leading":
        return 1.0
    sigma_max = grid.sigmas.max()
    return float(sigma_max * vp_scale(sigma_max))


def coefficients(grid: Grid, schedule: Schedule, **options) -> EulerCoefficients:
    """`euler_coefficients` at every grid point, (n,) float64 each."""
    return euler_coefficients(*sigma_pairs(grid, schedule))


SAMPLER = register(Sampler(
    name="euler",
    make_grid=make_euler_grid,
    coefficients=coefficients,
    update=euler_update,
    default_spacing="linspace",
    diffusers_class="EulerDiscreteScheduler",
    init_noise_scale=euler_init_noise_scale,
    karras=True,
    webui_names={"Euler": False},
    step=euler_step,
))
