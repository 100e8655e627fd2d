r"""LMS: a linear multistep solver of the probability-flow ODE in sigma, web-UI "LMS" and "LMS Karras".

In the variance-exploding view x_sigma = x_t / sqrt(alpha_bar) = x0 + sigma eps the ODE is
dx_sigma / dsigma = d(x_sigma, sigma) = (x_sigma - x0_hat) / sigma. Euler takes one derivative per
step; LMS fits a polynomial through the last (up to) four derivatives, at the sigmas where they
were taken, and integrates it over the step. Same grid as Euler's, one model call per step.

The grid here (`k_sigma_grid`) is also Heun's and DPM2's base grid: diffusers' Euler-family
`set_timesteps` ("linspace" fractional in float32, Karras sigmas over the grid's own range).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations import grids
from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput
from diffusion_notes.foundations.sigmas import vp_scale

ORDER = 4  # derivatives LMS combines: diffusers' `LMSDiscreteScheduler.step(order=4)`, k-diffusion's default


def k_sigma_grid(n: int, schedule, spacing: str = "linspace", steps_offset: int = 0,
                 use_karras_sigmas: bool = False, round_karras: bool = False):
    """n timesteps (float64, (n,)) and n + 1 sigmas ending in 0 ((n + 1,)): diffusers' k-samplers' grid.

    "linspace" is n fractional points over [0, T - 1] made in float32 (not rounded); "leading"
    and "trailing" are `grids.make_timesteps`. sigma is interpolated linearly in t. Karras sigmas
    span the grid's first and last sigma, their timesteps invert sigma(t) (fractional, or rounded
    with `round_karras`, as KDPM2's schedulers do). Shared by LMS, Heun and DPM2.
    """
    T = schedule.num_train_timesteps
    timesteps = grids.make_timesteps(n, T, spacing, steps_offset).numpy().astype(np.float64)  # checks n, spacing
    if spacing == "linspace":  # as diffusers makes it: float32, fractional
        timesteps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    timesteps, sigmas = grids._sigma_grid(timesteps, schedule, use_karras_sigmas, "grid")  # (n,), (n + 1,)
    if use_karras_sigmas and round_karras:
        timesteps = timesteps.round()
    return torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.float64)), torch.from_numpy(
        np.ascontiguousarray(sigmas, dtype=np.float64))


def k_init_noise_scale(grid: Grid, spacing: str | None) -> float:
    """Std of x_T in the DDPM scale where diffusers' k-sampler pipelines start (their `init_noise_sigma`).

    x_sigma = sigma_max z ("linspace", "trailing") or sqrt(1 + sigma_max^2) z ("leading"); in the
    DDPM scale, x = x_sigma / sqrt(1 + sigma_max^2): sigma_max / sqrt(1 + sigma_max^2), or 1.
    """
    if spacing == "leading":
        return 1.0
    sigma_max = grid.sigmas.max()
    return float(sigma_max * vp_scale(sigma_max))


def make_lms_grid(n: int, schedule, *, spacing: str | None = None, steps_offset: int = 0,
                  use_karras_sigmas: bool = False, **_) -> Grid:
    """LMSDiscreteScheduler's `set_timesteps`: `k_sigma_grid`, one model call per step."""
    timesteps, sigmas = k_sigma_grid(n, schedule, spacing or "linspace", steps_offset, use_karras_sigmas)
    return Grid(timesteps, sigmas)


class LMSCoefficients(NamedTuple):
    sigma: torch.Tensor  # sigma_i, where x_t sits
    scale: torch.Tensor  # sqrt(alpha_bar) at sigma_i ...
    scale_prev: torch.Tensor  # ... and at sigma_{i+1}
    b0: torch.Tensor  # the weight on d_i (this step's derivative) ...
    b1: torch.Tensor  # ... on d_{i-1}
    b2: torch.Tensor  # ... on d_{i-2}
    b3: torch.Tensor  # ... on d_{i-3} (0 while fewer derivatives exist)


def lms_weights(sigmas: torch.Tensor, i: int, order: int) -> list[float]:
    r"""The linear multistep weights of step i: the integral of each Lagrange basis polynomial over the step.

    $$b_k = \int_{\sigma_i}^{\sigma_{i+1}} \prod_{j \ne k,\ j < p}
            \frac{\tau - \sigma_{i-j}}{\sigma_{i-k} - \sigma_{i-j}}\, d\tau, \qquad k = 0, \dots, p - 1$$

    with p = `order` the number of derivatives in the fit. `sigmas` is the (n + 1,) float64 grid.
    The integral is exact (a polynomial of degree p - 1, integrated in closed form).

    Paper: the Adams–Bashforth methods with variable steps (Hairer, Nørsett & Wanner 1993,
    Sec. III.5); k-diffusion's `sample_lms` (Crowson), in sigma
    """
    nodes = [float(sigmas[i - j]) for j in range(order)]  # sigma_i, sigma_{i-1}, ...
    lower, upper = float(sigmas[i]), float(sigmas[i + 1])
    weights = []
    for k in range(order):
        basis = np.polynomial.Polynomial([1.0])  # the Lagrange polynomial, 1 at sigma_{i-k}, 0 at the others
        for j, s in enumerate(nodes):
            if j != k:
                basis = basis * np.polynomial.Polynomial([-s, 1.0]) / (nodes[k] - s)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(upper) - antiderivative(lower)))
    return weights


def lms_coefficients(grid: Grid, schedule=None, **_) -> LMSCoefficients:
    """`lms_update`'s coefficients at each of the grid's n steps, (n,) float64 tensors."""
    sigmas = grid.sigmas  # (n + 1,)
    n = len(sigmas) - 1
    b = torch.zeros(n, ORDER, dtype=torch.float64)  # (n, 4)
    for i in range(n):
        order = min(i + 1, ORDER)
        b[i, :order] = torch.tensor(lms_weights(sigmas, i, order), dtype=torch.float64)
    sigma, sigma_prev = sigmas[:-1], sigmas[1:]  # (n,) each
    return LMSCoefficients(sigma, vp_scale(sigma), vp_scale(sigma_prev), *b.unbind(1))


def lms_update(x_t, eps, c: LMSCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    r"""One LMS step, from sigma_i to sigma_{i+1}, with the last (up to) four derivatives.

    $$\hat x_0 = x_\sigma - \sigma_i\,\epsilon_\theta, \qquad d_i = \frac{x_\sigma - \hat x_0}{\sigma_i},
      \qquad x_{\sigma_{i+1}} = x_\sigma + \sum_{k=0}^{p-1} b_k\, d_{i-k}$$

    in the variance-exploding scale x_sigma = x_t / sqrt(alpha_bar), b_k from `lms_weights`,
    p = min(i + 1, 4); back in the DDPM scale, x_prev = x_{sigma_{i+1}} sqrt(alpha_bar_{i+1}).
    `state` keeps the derivatives (newest first); without it every step is Euler's.
    Deterministic; `noise` is ignored. Equals diffusers' `LMSDiscreteScheduler.step`
    given the same eps, once its sample is divided by sqrt(1 + sigma^2) (`scale_model_input`).

    Paper: k-diffusion's `sample_lms`; Hairer, Nørsett & Wanner 1993, Sec. III.5 (Adams methods)
    """
    x_sigma = x_t / c.scale  # (B, ...)
    x0_hat = x_sigma - c.sigma * eps if clip_x0 is None else (x_sigma - c.sigma * eps).clamp(-clip_x0, clip_x0)
    d = (x_sigma - x0_hat) / c.sigma  # dx_sigma / dsigma
    history = [] if state is None else state.get("derivatives", [])
    derivatives = [d, *history][:ORDER]  # d_i, d_{i-1}, ...
    if state is not None:
        state["derivatives"] = derivatives
    x_sigma_prev = x_sigma
    for b, d_k in zip((c.b0, c.b1, c.b2, c.b3), derivatives):
        x_sigma_prev = x_sigma_prev + b * d_k
    return StepOutput(x_sigma_prev * c.scale_prev, x0_hat)


LMS = register(Sampler(
    name="lms",
    make_grid=make_lms_grid,
    coefficients=lms_coefficients,
    update=lms_update,
    default_spacing="linspace",
    diffusers_class="LMSDiscreteScheduler",
    init_noise_scale=lambda grid, spacing: k_init_noise_scale(grid, spacing or "linspace"),
    karras=True,
    webui_names={"LMS": False, "LMS Karras": True},
))
