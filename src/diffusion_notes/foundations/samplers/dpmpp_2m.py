r"""DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep ODE solver in x0-prediction form.

Its diffusers class: DPMSolverMultistepScheduler (solver_order 2, dpmsolver++, midpoint,
final_sigmas_type "zero"). With alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar) (VP),
lambda_ = log(alpha_t / sigma_t) = -log(sigma) in Karras' sigma. Its grid takes n + 1 points and
drops the last; Karras sigmas span the whole schedule. Deterministic.
"""

from __future__ import annotations

import math
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


class DPMSolverCoefficients(NamedTuple):
    alpha: torch.Tensor  # VP alpha_t = sqrt(alpha_bar_t)
    sigma_vp: torch.Tensor  # VP sigma_t = sqrt(1 - alpha_bar_t)
    ratio: torch.Tensor  # sigma_{t'} / sigma_t (VP)
    phi: torch.Tensor  # alpha_{t'} (e^{-h} - 1)
    half_over_r: torch.Tensor  # 1 / (2 r), r = h_last / h
    lambda_: torch.Tensor  # -log(sigma), kept for the next step's r
    last: torch.Tensor  # sigma' = 0: the step lands on x0_hat


def dpmpp_2m_coefficients(sigma, sigma_prev, lambda_last) -> DPMSolverCoefficients:
    """`dpmpp_2m_step`'s coefficients, elementwise on float64 tensors (lambda_last: the previous step's lambda)."""
    alpha, alpha_prev = vp_scale(sigma), vp_scale(sigma_prev)
    lambda_, lambda_prev = -sigma.log(), -sigma_prev.log()  # log(alpha_t / sigma_t) = -log(sigma)
    h = lambda_prev - lambda_
    r = (lambda_ - lambda_last) / h
    return DPMSolverCoefficients(alpha, sigma * alpha, sigma_prev / sigma * alpha_prev / alpha,
                                 alpha_prev * torch.expm1(-h), 0.5 / r, lambda_, sigma_prev == 0)


def dpmpp_2m_update(x_t, eps, c: DPMSolverCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`dpmpp_2m_step` given its coefficients (c.last a bool); `state` keeps x0_hat for the next step."""
    x0_hat = clip((x_t - c.sigma_vp * eps) / c.alpha, clip_x0)  # (B, ...)
    x0_last = None if state is None else state.get("x0_hat_last")
    if state is not None:
        state["x0_hat_last"] = x0_hat
    if c.last:
        return StepOutput(x0_hat, x0_hat)  # the last step lands on the prediction
    D = x0_hat if x0_last is None else x0_hat + c.half_over_r * (x0_hat - x0_last)
    return StepOutput(c.ratio * x_t - c.phi * D, x0_hat)


def dpmpp_2m_step(
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
    r"""One DPM-Solver++(2M) step: a second-order multistep solver of the ODE in x0-prediction form.

    With alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar) (VP), lambda = log(alpha_t / sigma_t),
    h = lambda_{t'} - lambda_t and r = h_last / h (h_last: the previous step's h),

    $$D = \hat x_0 + \frac{1}{2r}\left(\hat x_0 - \hat x_0^{\text{last}}\right), \qquad
      x_{t'} = \frac{\sigma_{t'}}{\sigma_t}\,x_t - \alpha_{t'}\left(e^{-h} - 1\right) D$$

    The first step (no history yet) and the last (sigma' = 0) are first order, D = x0_hat
    (then the step is DDIM's). `state` keeps x0_hat and lambda between calls; without
    it every step is first order. Deterministic; `noise` is ignored. Equals diffusers'
    `DPMSolverMultistepScheduler.step` (default config: solver_order 2, dpmsolver++,
    midpoint, final_sigmas_type "zero"; also with SD 1.x's betas and `use_karras_sigmas`).
    sigma comes from `state["sigmas"]` as in `euler.euler_step`, else from the schedule.

    Book: eq-dpmpp-2m
    Paper: Lu et al. 2022 (DPM-Solver++), Algorithm 2
    """
    check_inputs(x_t, eps)
    sigma, sigma_prev = sigma_pair(t, t_prev, schedule, state)
    history = state if state is not None else {}
    lambda_last = history.get("lambda_last", torch.tensor(float("nan"), dtype=torch.float64))
    c = dpmpp_2m_coefficients(sigma, sigma_prev, torch.as_tensor(lambda_last, dtype=torch.float64))
    history["lambda_last"] = c.lambda_
    c = per_example(c, x_t)._replace(last=bool(c.last.all()))  # (B, 1, ...) each
    return dpmpp_2m_update(x_t, eps, c, clip_x0=clip_x0, state=history)


def make_dpmpp_grid(n: int, schedule: Schedule, *, spacing: str, steps_offset: int = 0,
                    use_karras_sigmas: bool = False, **options) -> Grid:
    """DPMSolverMultistepScheduler's `set_timesteps`.

    "linspace" and "leading" take n + 1 points and drop the last (t = 0): linspace(0, T - 1, n + 1)
    rounded, or k = T // (n + 1); "trailing" is `make_timesteps`'. Karras sigmas span the whole
    schedule and their timesteps are rounded (except for the cosine schedule), while the sigmas
    themselves stay exact.
    """
    T = schedule.num_train_timesteps
    if spacing == "trailing":
        timesteps = make_timesteps(n, T, spacing, steps_offset).numpy().astype(np.float64)
    elif spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    else:
        timesteps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
    _check_offset(timesteps, steps_offset, T)
    timesteps, sigmas = _sigma_grid(timesteps, schedule, use_karras_sigmas, "schedule")
    if schedule.kind != "cosine":
        timesteps = torch.from_numpy(timesteps.round().astype(np.int64).copy())  # (n,)
    else:
        timesteps = torch.from_numpy(timesteps.astype(np.float64).copy())  # (n,)
    return Grid(timesteps, torch.from_numpy(sigmas.astype(np.float64)))


def coefficients(grid: Grid, schedule: Schedule, **options) -> DPMSolverCoefficients:
    """`dpmpp_2m_coefficients` at every grid point, (n,) float64 each; the first has no history (lambda_last NaN)."""
    sigma, sigma_prev = sigma_pairs(grid, schedule)
    lambda_last = torch.cat([torch.full((1,), math.nan, dtype=torch.float64), -sigma[:-1].log()])
    return dpmpp_2m_coefficients(sigma, sigma_prev, lambda_last)


SAMPLER = register(Sampler(
    name="dpmpp_2m",
    make_grid=make_dpmpp_grid,
    coefficients=coefficients,
    update=dpmpp_2m_update,
    default_spacing="linspace",
    diffusers_class="DPMSolverMultistepScheduler",
    karras=True,
    webui_names={"DPM++ 2M": False, "DPM++ 2M Karras": True},
    step=dpmpp_2m_step,
))
