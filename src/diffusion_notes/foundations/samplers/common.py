"""What the sampler modules share: the step's output, its input checks, and a grid's point pairs.

Every step has the same signature,

    step(x_t, eps, t, t_prev, schedule, *, noise=None, clip_x0=None, state=None) -> StepOutput

and may add keyword-only options of its own after these (DDIM's `eta`), each with a default.
x_t is always in the DDPM (variance-preserving) scale, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diffusion_notes.foundations.diffusion import _check_data, _check_same_shape
from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.schedules import Schedule, expand_like
from diffusion_notes.foundations.sigmas import sigma_at


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # the sample at t_prev
    x0_hat: torch.Tensor  # the step's prediction of the clean data


def check_inputs(x_t, eps):
    _check_data(x_t, "x_t")
    _check_same_shape(x_t, eps, "x_t", "eps")


def clip(x0_hat, clip_x0):
    return x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)


def per_example(c, like):
    """A tuple of (B,) or () float64 tensors -> (B, 1, ...) tensors in `like`'s dtype and device."""
    return type(c)(*(expand_like(v, like) if v.is_floating_point() else v for v in c))


def fresh_noise(noise, x_t):
    if noise is None:
        return torch.randn_like(x_t)  # pass `noise` for reproducible samples
    _check_same_shape(x_t, noise, "x_t", "noise")
    return noise


def timestep_pairs(grid: Grid):
    """(t, t_prev) at each grid point, (n,) each: t_prev is the next grid point, -1 after the last."""
    t = grid.timesteps  # (n,)
    return t, torch.cat([t[1:], t.new_tensor([-1])])


def sigma_pairs(grid: Grid, schedule: Schedule):
    """(sigma, sigma_prev) at each grid point, (n,) float64 each: the grid's sigmas, or the schedule's.

    sigma is where the model is called: `grid.sigma_hat` where Karras' churn raised it.
    """
    sigmas = grid.sigmas if grid.sigmas is not None else \
        torch.cat([sigma_at(grid.timesteps, schedule), torch.zeros(1, dtype=torch.float64)])  # (n + 1,)
    return (sigmas[:-1] if grid.sigma_hat is None else grid.sigma_hat), sigmas[1:]


def sigma_pair(t, t_prev, schedule, state):
    """sigma at t and at t_prev, float64: from the loop's sigma grid if `state` holds one, else the schedule."""
    if state is not None and "sigmas" in state:
        i = state["step_index"]
        sigma, sigma_prev = state["sigmas"][i], state["sigmas"][i + 1]
    else:
        sigma, sigma_prev = sigma_at(t, schedule), sigma_at(t_prev, schedule)
    return torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(sigma_prev, dtype=torch.float64)


def x0_from_eps(x_t, eps, c, clip_x0):
    """x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), clipped (`diffusion.x0_from_eps`).

    c holds sqrt_alpha_bar and sqrt_one_minus_alpha_bar (DDPM's and DDIM's coefficients).
    """
    return clip((x_t - c.sqrt_one_minus_alpha_bar * eps) / c.sqrt_alpha_bar, clip_x0)
