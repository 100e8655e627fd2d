r"""DPM2 and DPM2 a: DPM-Solver-2's midpoint step in Karras' sigma, web-UI "DPM2", "DPM2 a" (and their Karras).

Each step from sigma_k to sigma_{k+1} takes an Euler step to the geometric midpoint
sigma_mid = sqrt(sigma_k sigma_{k+1}), calls the model there, and redoes the whole step with the
midpoint's derivative. The ancestral variant (DPM2 a) steps down to sigma_down instead and adds
fresh noise of std sigma_up, as Euler a does. One loop iteration is one model call, so the grid
interleaves the midpoints as diffusers' `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler` do:

    DPM2    timesteps  t_0, t(m_1), t_1, t(m_2), t_2, ..., t(m_{n-1}), t_{n-1}    m_k = sqrt(s_{k-1} s_k)
            sigmas     s_0, m_1,    s_1, m_2,    s_2, ..., m_{n-1},    s_{n-1}, 0
    DPM2 a  timesteps  t_0, t(m_0), t_1, t(m_1), t_2, ..., t(m_{n-2}), t_{n-1}    m_k = sqrt(s_k down_k)
            sigmas     s_0, m_0,    s_1, m_1,    s_2, ..., m_{n-2},    s_{n-1}, 0

with step_index 0, 0, 1, 1, ..., n - 1 and t(sigma) the inverse of sigma(t), linear in log sigma.
The last step, to sigma = 0, is Euler's alone (its midpoint would be 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput
from diffusion_notes.foundations.samplers.heun import first_halves
from diffusion_notes.foundations.samplers.lms import k_init_noise_scale, k_sigma_grid
from diffusion_notes.foundations.sigmas import ancestral_sigmas, midpoint_sigma, vp_scale


def timestep_at(sigma: torch.Tensor, schedule) -> torch.Tensor:
    """The (fractional) timestep whose sigma is `sigma`: sigma(t) inverted, linear in log sigma, float64."""
    sigmas = schedule.sigmas().numpy()  # (T,) increasing in t
    return torch.from_numpy(np.interp(np.log(sigma.numpy()), np.log(sigmas), np.arange(len(sigmas))))


def _interleave(t, s, t_mid, s_mid) -> Grid:
    """Points k and midpoints k alternate: (t_0, t_mid_0, t_1, ..., t_{n-1}), sigmas likewise, then 0."""
    n = len(t)
    timesteps = torch.stack([t[:-1], t_mid], dim=1).flatten()  # (2n - 2,)
    sigmas = torch.stack([s[:-2], s_mid], dim=1).flatten()  # (2n - 2,)
    step_index = torch.arange(2 * n - 1).div(2, rounding_mode="floor")  # 0, 0, 1, 1, ..., n - 1
    return Grid(torch.cat([timesteps, t[-1:]]), torch.cat([sigmas, s[-2:]]), step_index)


def make_dpm2_grid(n: int, schedule, *, spacing: str | None = None, steps_offset: int = 0,
                   use_karras_sigmas: bool = False, ancestral: bool = False, **_) -> Grid:
    """KDPM2(Ancestral)DiscreteScheduler's `set_timesteps`: the k-samplers' grid with each step's midpoint.

    Karras timesteps are rounded (the midpoints' are not), as those schedulers round them.
    timesteps (2n - 1,), sigmas (2n,) (the noise level of x at each call, then 0), step_index (2n - 1,).
    """
    t, s = k_sigma_grid(n, schedule, spacing or "linspace", steps_offset, use_karras_sigmas,
                        round_karras=True)  # (n,), (n + 1,)
    if ancestral:
        s_mid = midpoint_sigma(s[:-2], ancestral_sigmas(s[:-2], s[1:-1])[1])  # (n - 1,): steps 0 .. n - 2
    else:
        s_mid = midpoint_sigma(s[:-2], s[1:-1])  # (n - 1,)
    return _interleave(t, s, timestep_at(s_mid, schedule), s_mid)


def make_dpm2_a_grid(n: int, schedule, **options) -> Grid:
    return make_dpm2_grid(n, schedule, **{**options, "ancestral": True})


class DPM2Coefficients(NamedTuple):
    sigma: torch.Tensor  # where x_t sits at this call (sigma_k, or the midpoint)
    scale: torch.Tensor  # sqrt(alpha_bar) there
    dt: torch.Tensor  # first half: sigma_mid - sigma_k; second: sigma_down - sigma_k (sigma_{k+1} for DPM2)
    scale_prev: torch.Tensor  # sqrt(alpha_bar) where this call returns x: the midpoint, or sigma_{k+1}
    sigma_up: torch.Tensor  # the fresh noise's std at the second half (0 for DPM2)
    first: torch.Tensor  # bool: the Euler half to the midpoint (True) or the full step (False)


def _dpm2_coefficients(grid: Grid, ancestral: bool, eta: float = 1.0, s_noise: float = 1.0) -> DPM2Coefficients:
    sigmas = grid.sigmas  # (N + 1,): s_0, mid_0, s_1, mid_1, ..., s_{n-1}, 0
    sigma, sigma_next = sigmas[:-1], sigmas[1:]  # (N,) each
    if grid.sigma_hat is not None:  # Karras' churn: the step starts at sigma_hat
        sigma = grid.sigma_hat
    first = first_halves(grid.step_index)  # (N,)
    sigma_k = torch.cat([sigma[:1], sigma[:-1]])  # (N,): at a second half, the step's start s_k = sigmas[j - 1]
    sigma_to = sigma_next.clone()  # first half: the midpoint (0 at the last step); second: s_{k+1} = sigmas[j + 1]
    sigma_up, sigma_down = ancestral_sigmas(sigma_k, sigma_to, eta)  # (N,): used at second halves only
    if not ancestral:
        sigma_up, sigma_down = torch.zeros_like(sigma), sigma_to
    dt = torch.where(first, sigma_to - sigma, sigma_down - sigma_k)
    sigma_up = torch.where(first, torch.zeros_like(sigma), sigma_up if s_noise == 1 else s_noise * sigma_up)
    return DPM2Coefficients(sigma, vp_scale(sigma), dt, vp_scale(sigma_to), sigma_up, first)


def dpm2_coefficients(grid: Grid, schedule=None, **_) -> DPM2Coefficients:
    """`dpm2_update`'s coefficients at each of the grid's 2n - 1 calls, (2n - 1,) float64 tensors (DPM2)."""
    return _dpm2_coefficients(grid, ancestral=False)


def dpm2_a_coefficients(grid: Grid, schedule=None, *, eta_ancestral: float = 1.0, s_noise: float = 1.0,
                        **_) -> DPM2Coefficients:
    """`dpm2_update`'s coefficients for DPM2 a: the second half steps to sigma_down and adds sigma_up noise.

    k-diffusion's `eta` (`eta_ancestral`) scales sigma_up, and `s_noise` the noise it adds; a grid
    made with another eta (`grids.grid_from_sigmas`) has its midpoints toward that eta's sigma_down.
    """
    return _dpm2_coefficients(grid, ancestral=True, eta=eta_ancestral, s_noise=s_noise)


def dpm2_update(x_t, eps, c: DPM2Coefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    r"""One half of a DPM2 step: Euler to the midpoint (`c.first`), or the whole step with its derivative.

    $$d = \frac{x_\sigma - \hat x_0}{\sigma}, \qquad
      x_{\sigma_{\text{mid}}} = x_{\sigma_k} + (\sigma_{\text{mid}} - \sigma_k)\, d_k, \qquad
      x_{\sigma_{k+1}} = x_{\sigma_k} + (\sigma_\downarrow - \sigma_k)\, d_{\text{mid}} + \sigma_\uparrow z$$

    with x0_hat = x_sigma - sigma eps at the call's own sigma, x_sigma = x_t / sqrt(alpha_bar),
    sigma_down = sigma_{k+1} and sigma_up = 0 for DPM2 (`ancestral_sigmas` for DPM2 a, z = `noise`).
    `state` carries x_{sigma_k} to the second half. Equals diffusers' `KDPM2DiscreteScheduler.step`
    and `KDPM2AncestralDiscreteScheduler.step` given the same eps and noise, once their sample is
    divided by sqrt(1 + sigma^2) (`scale_model_input`).

    Paper: Lu et al. 2022 (DPM-Solver), Algorithm 1 (DPM-Solver-2) in Karras et al. 2022's sigma
    (EDM, Sec. 3); k-diffusion's `sample_dpm_2` and `sample_dpm_2_ancestral`
    """
    x_sigma = x_t / c.scale  # (B, ...)
    x0_hat = x_sigma - c.sigma * eps
    x0_hat = x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)
    d = (x_sigma - x0_hat) / c.sigma  # dx_sigma / dsigma
    if c.first:
        if state is not None:
            state["dpm2"] = x_sigma
        return StepOutput((x_sigma + c.dt * d) * c.scale_prev, x0_hat)
    if state is None or "dpm2" not in state:
        raise ValueError("DPM2's second half needs the step's starting point: pass the same `state` to both")
    x_sigma_next = state.pop("dpm2") + c.dt * d
    if noise is not None:
        x_sigma_next = x_sigma_next + c.sigma_up * noise
    return StepOutput(x_sigma_next * c.scale_prev, x0_hat)


def second_halves(grid: Grid, **_) -> list[bool]:
    """Where DPM2 a draws noise: at each step's second call (none at the last step, which has one)."""
    return (~first_halves(grid.step_index)).tolist()


def _init(grid, spacing):
    return k_init_noise_scale(grid, spacing or "linspace")


DPM2 = register(Sampler(
    name="dpm2",
    make_grid=make_dpm2_grid,
    coefficients=dpm2_coefficients,
    update=dpm2_update,
    default_spacing="linspace",
    diffusers_class="KDPM2DiscreteScheduler",
    init_noise_scale=_init,
    karras=True,
    webui_names={"DPM2": False, "DPM2 Karras": True},
))

DPM2_A = register(Sampler(
    name="dpm2_a",
    make_grid=make_dpm2_a_grid,
    coefficients=dpm2_a_coefficients,
    update=dpm2_update,
    default_spacing="linspace",
    diffusers_class="KDPM2AncestralDiscreteScheduler",
    draws_noise=second_halves,
    init_noise_scale=_init,
    karras=True,
    webui_names={"DPM2 a": False, "DPM2 a Karras": True},
))
