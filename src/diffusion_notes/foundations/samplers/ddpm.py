r"""DDPM (Ho et al. 2020): ancestral sampling, one posterior draw per step. Its diffusers class: DDPMScheduler.

Integer timesteps ("leading" spacing by default), alpha_bar from the schedule; its coefficients
are the forward process's posterior (`diffusion.posterior_coefficients`), computed in x_t's dtype
from alpha_bar (float32, as diffusers does: 1 / sqrt(alpha_bar) amplifies any other rounding at
large t). It draws fresh noise at every step but the last (t = 0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diffusion_notes.foundations.diffusion import alpha_bar_pair, check_timesteps, posterior_coefficients
from diffusion_notes.foundations.grids import Grid, make_timesteps
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import (
    StepOutput,
    check_inputs,
    fresh_noise,
    timestep_pairs,
    x0_from_eps,
)
from diffusion_notes.foundations.schedules import Schedule, expand_like


class DDPMCoefficients(NamedTuple):
    sqrt_alpha_bar: torch.Tensor  # sqrt(alpha_bar_t)
    sqrt_one_minus_alpha_bar: torch.Tensor
    coef_x0: torch.Tensor  # the posterior mean's weight on x0_hat ...
    coef_xt: torch.Tensor  # ... and on x_t
    std: torch.Tensor  # sqrt(beta_tilde), the posterior's standard deviation


def ddpm_coefficients(alpha_bar, alpha_bar_prev) -> DDPMCoefficients:
    """`diffusion.q_posterior`'s coefficients for the jump t -> t_prev, elementwise, in alpha_bar's dtype."""
    coef_x0, coef_xt, variance = posterior_coefficients(alpha_bar, alpha_bar_prev)
    return DDPMCoefficients(alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), coef_x0, coef_xt, variance.sqrt())


def ddpm_update(x_t, eps, c: DDPMCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`ddpm_step` given its coefficients; no noise is added when `noise` is None."""
    x0_hat = x0_from_eps(x_t, eps, c, clip_x0)  # (B, ...)
    x_prev = c.coef_x0 * x0_hat + c.coef_xt * x_t
    return StepOutput(x_prev if noise is None else x_prev + c.std * noise, x0_hat)


def ddpm_step(
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
    r"""One DDPM ancestral step from t to t_prev: predict x0, then sample the posterior.

    $$\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta}{\sqrt{\bar\alpha_t}}, \qquad
      x_{t'} = \tilde\mu_t(x_t, \hat x_0) + \sqrt{\tilde\beta_t}\, z, \quad z \sim \mathcal N(0, I)$$

    with t' = t_prev, beta_t := 1 - alpha_bar_t / alpha_bar_{t'} (alpha_bar_{-1} = 1)
    and no noise added when t = 0. For t' = t - 1 this is eq. 11 of the paper:
    $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta\right)
    + \sigma_t z$.
    `clip_x0` clamps x0_hat to [-clip_x0, clip_x0] first (diffusers' `clip_sample`).
    The variance is the posterior's, beta_tilde ("fixed_small"). Equals diffusers'
    `DDPMScheduler.step` given the same eps and noise.

    Book: eq-ddpm-step
    Paper: Ho et al. 2020, Algorithm 2 and eq. 11
    """
    check_inputs(x_t, eps)
    alpha_bar, alpha_bar_prev = (expand_like(a, x_t) for a in alpha_bar_pair(t, t_prev, schedule))  # (B, 1, ...)
    c = ddpm_coefficients(alpha_bar, alpha_bar_prev)  # (B, 1, ...) each
    has_noise = check_timesteps(t, schedule.num_train_timesteps).reshape(-1) > 0  # (B,): none where t = 0
    if not has_noise.any():
        return ddpm_update(x_t, eps, c, clip_x0=clip_x0)
    c = c._replace(std=c.std * expand_like(has_noise.double(), x_t))
    return ddpm_update(x_t, eps, c, noise=fresh_noise(noise, x_t), clip_x0=clip_x0)


def make_integer_grid(n: int, schedule: Schedule, *, spacing: str, steps_offset: int = 0, **options) -> Grid:
    """DDPM's and DDIM's grid: `grids.make_timesteps` (DDPMScheduler's and DDIMScheduler's `set_timesteps`)."""
    return Grid(make_timesteps(n, schedule.num_train_timesteps, spacing, steps_offset), None)


def coefficients(grid: Grid, schedule: Schedule, *, dtype=torch.float32, **options) -> DDPMCoefficients:
    """`ddpm_coefficients` at every grid point, (n,) each, in `dtype` (that of x)."""
    alpha_bar, alpha_bar_prev = (a.to(dtype) for a in alpha_bar_pair(*timestep_pairs(grid), schedule))  # (n,)
    return ddpm_coefficients(alpha_bar, alpha_bar_prev)


SAMPLER = register(Sampler(
    name="ddpm",
    make_grid=make_integer_grid,
    coefficients=coefficients,
    update=ddpm_update,
    default_spacing="leading",
    diffusers_class="DDPMScheduler",
    draws_noise=lambda grid, **options: (grid.timesteps > 0).tolist(),  # every step but t = 0
    diffusers_config={"clip_sample": False},
    webui_names={"DDPM": False},
    step=ddpm_step,
))
