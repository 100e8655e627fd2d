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

The Stable Diffusion web UI's "LCM" (`lcm_webui`) runs the same update on another grid: n times
spaced evenly from 999 down to 19 (999, 672.3, 345.7, 19 for n = 4), each noise level read off the
50 distillation levels by interpolating log sigma, and the model called at the nearest of the 50
timesteps (999, 679, 339, 19). Its last call is at t = 19, where diffusers' is at 259 for n = 4.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput, check_inputs, fresh_noise, x0_from_eps
from diffusion_notes.foundations.schedules import Schedule, expand_like
from diffusion_notes.foundations.sigmas import vp_scale

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
    step=lcm_step,  # no web-UI name: the web UI's "LCM" is `lcm_webui`, on another grid
))


# --- the Stable Diffusion web UI's "LCM": the same update on k-diffusion's kind of grid ---------------------


def lcm_webui_sigmas(schedule: Schedule, original_steps: int = ORIGINAL_STEPS) -> torch.Tensor:
    """sigma at the distillation's timesteps, (original_steps,) float32 ascending, as the web UI's LCM holds them."""
    origin = torch.from_numpy(lcm_origin_timesteps(schedule.num_train_timesteps, original_steps))  # (50,)
    alpha_bar = schedule.alphas_cumprod.to(torch.float32)[origin]  # (50,)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def make_lcm_webui_grid(n: int, schedule: Schedule, *, original_steps: int = ORIGINAL_STEPS, **options) -> Grid:
    r"""The web UI's LCM grid: n times evenly spaced from the top distillation timestep to the lowest.

    With k = T // original_steps, the times t_i run from T - 1 down to k - 1 (999 to 19), each read
    as a fractional index u_i = (t_i - (k - 1)) / k into the distillation's 50 noise levels, and

    $$\log\sigma_i = (1 - w)\log\sigma_{\lfloor u_i\rfloor} + w\log\sigma_{\lceil u_i\rceil},\quad
      w = u_i - \lfloor u_i\rfloor$$

    then a final 0. The model is called at the distillation timestep whose log sigma is nearest,
    k j + k - 1. In float32, as the web UI's `LCMCompVisDenoiser.get_sigmas` and k-diffusion's
    `DiscreteSchedule.t_to_sigma` compute it. Any n >= 1 works; past 50 the timesteps repeat.
    """
    k = schedule.num_train_timesteps // original_steps
    log_sigmas = lcm_webui_sigmas(schedule, original_steps).log()  # (50,) ascending
    t = torch.linspace(float(original_steps * k - 1), float(k - 1), n)  # (n,) float32, from the top
    u = ((t - (k - 1)) / k).clamp(0, original_steps - 1)  # (n,) fractional index
    w = u.frac()
    log_sigma = (1 - w) * log_sigmas[u.floor().long()] + w * log_sigmas[u.ceil().long()]  # (n,)
    nearest = (log_sigma[None, :] - log_sigmas[:, None]).abs().argmin(dim=0)  # (n,) index of the nearest level
    sigmas = torch.cat([log_sigma.exp().double(), torch.zeros(1, dtype=torch.float64)])  # (n + 1,)
    return Grid(nearest * k + (k - 1), sigmas)


def lcm_webui_coefficients(grid: Grid, schedule: Schedule, **options) -> LCMCoefficients:
    """Each grid point's `LCMCoefficients` in the DDPM scale, (n,) float64 each, on the grid's own noise levels.

    The web UI carries x_sigma = x_t / sqrt(alpha_bar) and adds c_skip x_sigma; in the DDPM scale that
    is c_skip / sqrt(alpha_bar) times x_t. sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2), at sigma = 0 one.
    """
    sigma, sigma_prev = grid.sigmas[:-1], grid.sigmas[1:]  # (n,) each
    scale, scale_prev = vp_scale(sigma), vp_scale(sigma_prev)
    c_skip, c_out = lcm_boundary(grid.timesteps)
    return LCMCoefficients(scale, sigma * scale, c_skip / scale, c_out, scale_prev, sigma_prev * scale_prev)


WEBUI = register(Sampler(
    name="lcm_webui",
    make_grid=make_lcm_webui_grid,
    coefficients=lcm_webui_coefficients,
    update=lcm_update,
    default_spacing="linspace",  # unused: the grid is its own
    diffusers_class="LCMScheduler",  # the nearest: the same update, on diffusers' own grid
    draws_noise=lambda grid, **options: [True] * (len(grid.timesteps) - 1) + [False],
    init_noise_scale=lambda grid, spacing: float(grid.sigmas[0] * vp_scale(grid.sigmas[0])),  # x = sigma_max z
    webui_names={"LCM": False},
))
