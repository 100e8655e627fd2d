r"""Heun: Karras et al.'s second-order solver of the probability-flow ODE, web-UI "Heun".

Each step from sigma_k to sigma_{k+1} takes an Euler step, calls the model again at the point it
reached, and redoes the step with the mean of the two derivatives. One loop iteration is one
model call, so the grid interleaves the two halves as diffusers' `HeunDiscreteScheduler` does:

    timesteps  t_0, t_1, t_1, t_2, t_2, ..., t_{n-1}, t_{n-1}        (2n - 1 model calls)
    sigmas     s_0, s_1, s_1, s_2, s_2, ..., s_{n-1}, s_{n-1}, 0     (where x sits at each call, then 0)
    step_index 0,   0,   1,   1,   2,   ..., n - 2,   n - 1

The first half keeps its derivative and x_sigma in `state`; the second half reads them. The last
step (to sigma = 0) is Euler's alone: the correction would divide by sigma = 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput
from diffusion_notes.foundations.samplers.lms import k_init_noise_scale, k_sigma_grid
from diffusion_notes.foundations.sigmas import vp_scale


def first_halves(step_index: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether loop iteration j is the first model call of its step (a new step_index)."""
    first = torch.ones(len(step_index), dtype=torch.bool)  # (N,)
    first[1:] = step_index[1:] != step_index[:-1]
    return first


def make_heun_grid(n: int, schedule, *, spacing: str | None = None, steps_offset: int = 0,
                   use_karras_sigmas: bool = False, **_) -> Grid:
    """HeunDiscreteScheduler's `set_timesteps`: the k-samplers' grid (`lms.k_sigma_grid`), its inner points twice.

    timesteps (2n - 1,), sigmas (2n,) (the noise level of x at each call, then 0), step_index (2n - 1,).
    """
    t, s = k_sigma_grid(n, schedule, spacing or "linspace", steps_offset, use_karras_sigmas)  # (n,), (n + 1,)
    timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)])  # (2n - 1,)
    sigmas = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])  # (2n,)
    step_index = torch.arange(2 * n - 1).div(2, rounding_mode="floor")  # 0, 0, 1, 1, ..., n - 1
    return Grid(timesteps, sigmas, step_index)


class HeunCoefficients(NamedTuple):
    sigma: torch.Tensor  # where x_t sits at this call
    scale: torch.Tensor  # sqrt(alpha_bar) there
    dt: torch.Tensor  # sigma_{k+1} - sigma_k, the step both halves take
    scale_prev: torch.Tensor  # sqrt(alpha_bar) at the point this call returns (sigma_{k+1})
    first: torch.Tensor  # bool: the Euler half (True) or the correction (False)


def heun_coefficients(grid: Grid, schedule=None, **_) -> HeunCoefficients:
    """`heun_update`'s coefficients at each of the grid's 2n - 1 calls, (2n - 1,) float64 tensors."""
    sigmas = grid.sigmas  # (N + 1,)
    sigma = sigmas[:-1] if grid.sigma_hat is None else grid.sigma_hat  # (N,): where the model is called
    first = first_halves(grid.step_index)  # (N,)
    # first half: from sigmas[j] to sigmas[j + 1]; second: x sits at sigma_{k+1} = sigmas[j], from sigmas[j - 1]
    sigma_from = torch.where(first, sigma, torch.cat([sigma[:1], sigma[:-1]]))
    sigma_to = torch.where(first, sigmas[1:], sigma)
    return HeunCoefficients(sigma, vp_scale(sigma), sigma_to - sigma_from, vp_scale(sigma_to), first)


def heun_update(x_t, eps, c: HeunCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    r"""One half of a Heun step: the Euler predictor (`c.first`), or the trapezoidal corrector.

    $$d = \frac{x_\sigma - \hat x_0}{\sigma}, \qquad
      \tilde x_{\sigma_{k+1}} = x_{\sigma_k} + (\sigma_{k+1} - \sigma_k)\, d_k, \qquad
      x_{\sigma_{k+1}} = x_{\sigma_k} + (\sigma_{k+1} - \sigma_k)\,\frac{d_k + d'_{k+1}}{2}$$

    with x0_hat = x_sigma - sigma eps at the call's own sigma (sigma_k for the first half,
    sigma_{k+1} at the predicted point for the second), x_sigma = x_t / sqrt(alpha_bar), and
    d'_{k+1} the derivative at the predicted point. `state` carries d_k and x_{sigma_k} from the
    first half to the second. Deterministic; `noise` is ignored. Equals diffusers'
    `HeunDiscreteScheduler.step` given the same eps, once its sample is divided by
    sqrt(1 + sigma^2) (`scale_model_input`).

    Paper: Karras et al. 2022 (EDM), Algorithm 1 (Heun's 2nd order method; Algorithm 2 with S_churn = 0)
    """
    x_sigma = x_t / c.scale  # (B, ...)
    x0_hat = x_sigma - c.sigma * eps
    x0_hat = x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)
    d = (x_sigma - x0_hat) / c.sigma  # dx_sigma / dsigma
    if c.first:
        if state is not None:
            state["heun"] = (x_sigma, d)
        return StepOutput((x_sigma + c.dt * d) * c.scale_prev, x0_hat)
    if state is None or "heun" not in state:
        raise ValueError("Heun's second half needs the first half's derivative: pass the same `state` to both")
    x_sigma_k, d_k = state.pop("heun")
    return StepOutput((x_sigma_k + c.dt * (d_k + d) / 2) * c.scale_prev, x0_hat)


HEUN = register(Sampler(
    name="heun",
    make_grid=make_heun_grid,
    coefficients=heun_coefficients,
    update=heun_update,
    default_spacing="linspace",
    diffusers_class="HeunDiscreteScheduler",
    init_noise_scale=lambda grid, spacing: k_init_noise_scale(grid, spacing or "linspace"),
    karras=True,
    webui_names={"Heun": False},
))
