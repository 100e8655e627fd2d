r"""DPM++ 2M SDE: DPM-Solver++(2M) for the reverse SDE, web-UI "DPM++ 2M SDE" and "DPM++ 2M SDE Karras".

The same data-prediction multistep solver as DPM++ 2M, solving the reverse SDE instead of the
ODE: it forgets part of x_t at each step and puts back fresh noise of the matching variance.
diffusers: `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")` (solver_order 2,
midpoint, final_sigmas_type "zero"), which draws one noise at every step, the last included.

Notation (VP, as DPM-Solver writes it): alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar),
lambda_t = log(alpha_t / sigma_t) = -log(sigma) with sigma Karras' noise level, h = lambda_{t'} - lambda_t.
The grid (`multistep_grid`) is DPMSolverMultistepScheduler's, which UniPC shares.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations import grids
from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput
from diffusion_notes.foundations.sigmas import vp_scale


def multistep_grid(n: int, schedule, *, spacing: str | None = None, steps_offset: int = 0,
                   use_karras_sigmas: bool = False, **_) -> Grid:
    """DPMSolverMultistepScheduler's (and UniPCMultistepScheduler's) `set_timesteps`: n timesteps, n + 1 sigmas.

    "linspace" and "leading" take n + 1 points and drop the last (t = 0): linspace(0, T - 1, n + 1)
    rounded, or k = T // (n + 1); "trailing" is `grids.make_timesteps`. Karras sigmas span the
    whole schedule; their timesteps are rounded (except for the cosine schedule), the sigmas not.
    """
    spacing = spacing or "linspace"
    T = schedule.num_train_timesteps
    timesteps = grids.make_timesteps(n, T, spacing, steps_offset).numpy().astype(np.float64)  # checks the options
    if spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        timesteps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
    timesteps, sigmas = grids._sigma_grid(timesteps, schedule, use_karras_sigmas, "schedule")  # (n,), (n + 1,)
    if schedule.kind != "cosine":
        timesteps = timesteps.round()
    timesteps = torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.float64))
    if schedule.kind != "cosine":
        timesteps = timesteps.long()  # (n,)
    return Grid(timesteps, torch.from_numpy(np.ascontiguousarray(sigmas, dtype=np.float64)))


def log_snr_steps(sigmas: torch.Tensor):
    r"""lambda at each grid point and each step's h and r, from the (n + 1,) sigmas, float64.

    $$\lambda_i = -\log\sigma_i, \qquad h_i = \lambda_{i+1} - \lambda_i, \qquad r_i = \frac{h_{i-1}}{h_i}$$

    (-log sigma is log(alpha_t / sigma_t) in the VP scale.) r_0 is NaN: the first step has no history.

    Paper: Lu et al. 2022 (DPM-Solver++), Sec. 3 and Algorithm 2
    """
    lambda_ = -sigmas.log()  # (n + 1,): +inf at sigma = 0
    h = lambda_[1:] - lambda_[:-1]  # (n,)
    r = torch.cat([torch.full((1,), math.nan, dtype=torch.float64), h[:-1] / h[1:]])  # (n,)
    return lambda_, h, r


class SDECoefficients(NamedTuple):
    alpha: torch.Tensor  # VP alpha_t = sqrt(alpha_bar_t)
    sigma_vp: torch.Tensor  # VP sigma_t = sqrt(1 - alpha_bar_t)
    ratio: torch.Tensor  # (sigma_{t'} / sigma_t) e^{-h}: what is kept of x_t
    coef_D: torch.Tensor  # alpha_{t'} (1 - e^{-2h}): the weight on D
    std: torch.Tensor  # sigma_{t'} sqrt(1 - e^{-2h}): the fresh noise's std
    half_over_r: torch.Tensor  # 1 / (2 r)
    last: torch.Tensor  # bool: sigma' = 0, the step lands on x0_hat


def dpmpp_2m_sde_coefficients(grid: Grid, schedule=None, *, eta_ancestral: float = 1.0, s_noise: float = 1.0,
                              **_) -> SDECoefficients:
    r"""`dpmpp_2m_sde_update`'s coefficients at each of the grid's n steps, (n,) float64 tensors.

    k-diffusion's `eta` (`eta_ancestral`) sets how much of x_t the step forgets, and `s_noise` scales
    the fresh noise: with eta the step keeps (sigma_{t'} / sigma_t) e^{-eta h} of x_t, weighs D by
    alpha_{t'} (1 - e^{-(1 + eta) h}) and adds noise of std sigma_{t'} sqrt(1 - e^{-2 eta h}) s_noise
    (eta = 0: the ODE solver DPM++ 2M; eta = 1, the default: the formulas above).
    """
    sigma, sigma_prev = grid.sigmas[:-1], grid.sigmas[1:]  # (n,) each
    _, h, r = log_snr_steps(grid.sigmas)
    alpha, alpha_prev = vp_scale(sigma), vp_scale(sigma_prev)
    sigma_vp, sigma_vp_prev = sigma * alpha, sigma_prev * alpha_prev
    if eta_ancestral == 1:
        kept = -torch.expm1(-2 * h)  # 1 - e^{-2h}: 1 at the last step (h = inf)
        weight, std, forget = kept, kept.sqrt(), torch.exp(-h)
    else:
        weight = -torch.expm1(-(1 + eta_ancestral) * h)  # 1 - e^{-(1 + eta) h}
        std, forget = (-torch.expm1(-2 * eta_ancestral * h)).sqrt(), torch.exp(-eta_ancestral * h)
    std = sigma_vp_prev * std if s_noise == 1 else sigma_vp_prev * std * s_noise
    return SDECoefficients(alpha, sigma_vp, sigma_vp_prev / sigma_vp * forget, alpha_prev * weight,
                           std, 0.5 / r, sigma_prev == 0)


def dpmpp_2m_sde_update(x_t, eps, c: SDECoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    r"""One DPM-Solver++(2M) step of the reverse SDE, from t to t'.

    $$\hat x_0 = \frac{x_t - \sigma_t\,\epsilon_\theta}{\alpha_t}, \qquad
      D = \hat x_0 + \frac{1}{2r}\left(\hat x_0 - \hat x_0^{\text{last}}\right)$$
    $$x_{t'} = \frac{\sigma_{t'}}{\sigma_t}e^{-h}\,x_t + \alpha_{t'}\left(1 - e^{-2h}\right) D
             + \sigma_{t'}\sqrt{1 - e^{-2h}}\; z$$

    The first step (no history) and the last (sigma' = 0, where x_{t'} = x0_hat) are first order,
    D = x0_hat. `state` keeps x0_hat for the next step; z = `noise` (drawn at every step). Equals
    diffusers' `DPMSolverMultistepScheduler.step` with algorithm_type="sde-dpmsolver++" (solver_order 2,
    midpoint) given the same eps and noise.

    Paper: Lu et al. 2022 (DPM-Solver++), Algorithm 2 (2M), applied to the reverse SDE as
    k-diffusion's `sample_dpmpp_2m_sde` (midpoint) and diffusers' "sde-dpmsolver++" do
    """
    x0_hat = (x_t - c.sigma_vp * eps) / c.alpha  # (B, ...)
    x0_hat = x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)
    x0_last = None if state is None else state.get("x0_hat_last")
    if state is not None:
        state["x0_hat_last"] = x0_hat
    if c.last:
        return StepOutput(x0_hat, x0_hat)  # the last step lands on the prediction
    D = x0_hat if x0_last is None else x0_hat + c.half_over_r * (x0_hat - x0_last)
    x_prev = c.ratio * x_t + c.coef_D * D
    return StepOutput(x_prev if noise is None else x_prev + c.std * noise, x0_hat)


DPMPP_2M_SDE = register(Sampler(
    name="dpmpp_2m_sde",
    make_grid=multistep_grid,
    coefficients=dpmpp_2m_sde_coefficients,
    update=dpmpp_2m_sde_update,
    default_spacing="linspace",
    diffusers_class="DPMSolverMultistepScheduler",
    # k-diffusion draws no noise at eta = 0; diffusers draws at every step
    draws_noise=lambda grid, *, eta_ancestral=1.0, **options: [eta_ancestral != 0] * len(grid.timesteps),
    karras=True,
    diffusers_config={"algorithm_type": "sde-dpmsolver++"},
    webui_names={"DPM++ 2M SDE": False, "DPM++ 2M SDE Karras": True},
))
