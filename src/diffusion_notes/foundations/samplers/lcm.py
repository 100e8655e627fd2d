r"""LCM: multistep consistency sampling (Luo et al. 2023). Its diffusers class: LCMScheduler.

A latent consistency model f_theta(x_t, t) maps any point of a probability-flow trajectory
straight to the trajectory's start. It is a UNet that predicts eps, read through the boundary
condition f(x, 0) = x (`lcm_boundary`):

    f_theta(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, eps_theta(x_t, t))

One step is enough in principle; a few steps trade speed for quality by adding fresh noise
back to the next, lower grid point and asking again (Song et al. 2023, Algorithm 1).

The grid is LCM's own: the distillation only ever saw the `original_steps` = 50 timesteps
19, 39, ..., 999 of the DDIM skip k = T // 50, and n steps take n evenly spaced indices of them,
from the top (999, 759, 499, 259 for n = 4), as diffusers' `LCMScheduler.set_timesteps` does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput, check_inputs, fresh_noise, x0_from_eps
from diffusion_notes.foundations.schedules import Schedule, expand_like

ORIGINAL_STEPS = 50  # the DDIM grid the consistency model was distilled on (LCM's `original_inference_steps`)
TIMESTEP_SCALING = 10.0  # LCM's: t is scaled by 10 before the boundary scalings
SIGMA_DATA = 0.5


def lcm_boundary(t, timestep_scaling: float = TIMESTEP_SCALING, sigma_data: float = SIGMA_DATA):
    r"""(c_skip(t), c_out(t)): the consistency function's boundary scalings, elementwise on t.

    $$c_\text{skip}(t) = \frac{\sigma_\text{data}^2}{(st)^2 + \sigma_\text{data}^2},\qquad
      c_\text{out}(t) = \frac{st}{\sqrt{(st)^2 + \sigma_\text{data}^2}}$$

    with s the timestep scaling. At t = 0, c_skip = 1 and c_out = 0, so f(x, 0) = x holds by
    construction; by t = 19 (the first grid point) c_skip is below 1e-5.

    Book: eq-lcm-boundary
    Paper: Song et al. 2023 (Consistency Models), eq. 7 and Appendix C; Luo et al. 2023 (LCM), eq. 9
    """
    scaled = torch.as_tensor(t, dtype=torch.float64) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def lcm_origin_timesteps(T: int = 1000, original_steps: int = ORIGINAL_STEPS) -> np.ndarray:
    """The distillation's DDIM grid, ascending: k - 1, 2k - 1, ..., T - 1 with k = T // original_steps."""
    k = T // original_steps
    return np.arange(1, original_steps + 1) * k - 1


def make_lcm_grid(n: int, schedule: Schedule, *, original_steps: int = ORIGINAL_STEPS, **options) -> Grid:
    """n timesteps of LCM's grid, evenly spaced in index from the top: diffusers' `LCMScheduler.set_timesteps`."""
    if n > original_steps:
        raise ValueError(f"LCM takes at most {original_steps} steps (the grid it was distilled on), got {n}")
    origin = lcm_origin_timesteps(schedule.num_train_timesteps, original_steps)[::-1]  # (50,) descending
    index = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)  # (n,)
    return Grid(torch.from_numpy(origin[index].copy()), None)


class LCMCoefficients(NamedTuple):
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    sqrt_alpha_bar_prev: torch.Tensor  # where fresh noise puts the consistency estimate back
    sqrt_one_minus_alpha_bar_prev: torch.Tensor


def coefficients(grid: Grid, schedule: Schedule, *, dtype=torch.float32, **options) -> LCMCoefficients:
    """Each grid point's scalars, (n,) each, in alpha_bar's float32 as diffusers' scheduler holds them.

    The last step's "previous" point is the step itself (diffusers'); it adds no noise there.
    """
    t = grid.timesteps  # (n,)
    prev = torch.cat([t[1:], t[-1:]])
    alpha_bar = schedule.alphas_cumprod.to(torch.float32)
    a, a_prev = alpha_bar[t], alpha_bar[prev]
    c_skip, c_out = lcm_boundary(t)
    return LCMCoefficients(a.sqrt(), (1 - a).sqrt(), c_skip.to(torch.float32), c_out.to(torch.float32),
                           a_prev.sqrt(), (1 - a_prev).sqrt())


def lcm_update(x_t, eps, c: LCMCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    r"""One multistep consistency step: the consistency estimate, then (except at the last step) fresh
    noise back to the next grid point.

    $$\hat x_0 = c_\text{skip}(t)\,x_t + c_\text{out}(t)\,\frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta}
      {\sqrt{\bar\alpha_t}},\qquad x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\,z$$

    Book: eq-lcm-step
    Paper: Song et al. 2023, Algorithm 1; Luo et al. 2023, Algorithm 3
    """
    denoised = c.c_out * x0_from_eps(x_t, eps, c, clip_x0) + c.c_skip * x_t  # (B, ...)
    if noise is None:
        return StepOutput(denoised, denoised)
    return StepOutput(c.sqrt_alpha_bar_prev * denoised + c.sqrt_one_minus_alpha_bar_prev * noise, denoised)


def lcm_step(x_t, eps, t, t_prev, schedule: Schedule, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`lcm_update` as one flat function of (t, t_prev); t_prev = -1 is the last step (no noise added)."""
    check_inputs(x_t, eps)
    t = torch.as_tensor(t)
    last = torch.as_tensor(t_prev).lt(0).all()
    prev = t if last else torch.as_tensor(t_prev)
    alpha_bar = schedule.alphas_cumprod.to(torch.float32)
    a, a_prev = (expand_like(alpha_bar[v], x_t) for v in (t, prev))
    c_skip, c_out = (expand_like(v.to(torch.float32), x_t) for v in lcm_boundary(t))
    c = LCMCoefficients(a.sqrt(), (1 - a).sqrt(), c_skip, c_out, a_prev.sqrt(), (1 - a_prev).sqrt())
    return lcm_update(x_t, eps, c, noise=None if last else fresh_noise(noise, x_t), clip_x0=clip_x0)


SAMPLER = register(Sampler(
    name="lcm",
    make_grid=make_lcm_grid,
    coefficients=coefficients,
    update=lcm_update,
    default_spacing="leading",  # unused: LCM's grid is its own
    diffusers_class="LCMScheduler",
    draws_noise=lambda grid, **options: [True] * (len(grid.timesteps) - 1) + [False],
    diffusers_config={"clip_sample": False},
    webui_names={"LCM": False},
    step=lcm_step,
))
