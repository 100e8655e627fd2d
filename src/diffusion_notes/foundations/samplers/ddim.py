r"""DDIM (Song et al. 2021): jump to x0_hat, walk back along the predicted noise. Its diffusers class: DDIMScheduler.

Integer timesteps ("leading" spacing by default, as DDPM's), coefficients in x_t's dtype from
alpha_bar. eta = 0 is deterministic; eta > 0 draws fresh noise at every step. `ddim_invert` runs
the deterministic update backwards, x_0 -> x_T.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffusion_notes.foundations.diffusion import alpha_bar_pair
from diffusion_notes.foundations.grids import Grid, make_grid
from diffusion_notes.foundations.guidance import CFGDenoiser, check_guidance_scale
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import (
    StepOutput,
    check_inputs,
    fresh_noise,
    timestep_pairs,
    x0_from_eps,
)
from diffusion_notes.foundations.samplers.ddpm import make_integer_grid
from diffusion_notes.foundations.schedules import Schedule, expand_like


class DDIMCoefficients(NamedTuple):
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    sqrt_alpha_bar_prev: torch.Tensor  # the weight on x0_hat
    coef_eps: torch.Tensor  # sqrt(1 - alpha_bar_prev - sigma_t^2), the weight on eps
    std: torch.Tensor  # sigma_t = eta * sqrt(variance)


def ddim_coefficients(alpha_bar, alpha_bar_prev, eta: float = 0.0) -> DDIMCoefficients:
    """`ddim_step`'s coefficients, elementwise, in alpha_bar's dtype."""
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    std = eta * variance.sqrt()
    coef_eps = (1 - alpha_bar_prev - std**2).sqrt()
    return DDIMCoefficients(alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), alpha_bar_prev.sqrt(), coef_eps, std)


def ddim_update(x_t, eps, c: DDIMCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`ddim_step` given its coefficients; `noise` (used for eta > 0) may be None when eta = 0."""
    x0_hat = x0_from_eps(x_t, eps, c, clip_x0)  # (B, ...)
    x_prev = c.sqrt_alpha_bar_prev * x0_hat + c.coef_eps * eps
    return StepOutput(x_prev if noise is None else x_prev + c.std * noise, x0_hat)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t,
    t_prev,
    schedule: Schedule,
    *,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
    state: dict | None = None,
    eta: float = 0.0,
    set_alpha_to_one: bool = True,
) -> StepOutput:
    r"""One DDIM step from t to t_prev: jump to x0_hat, then walk back along the predicted noise.

    $$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0
             + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\;\epsilon_\theta + \sigma_t z, \qquad
      \sigma_t = \eta\sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}}
                     \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}}$$

    eta = 0 is deterministic (DDIM proper), eta = 1 has DDPM's variance. At
    t_prev = -1, alpha_bar_{t'} is 1 (`set_alpha_to_one=True`) or alpha_bar_0
    (False, Stable Diffusion's setting). `noise` is used only when eta > 0.
    Equals diffusers' `DDIMScheduler.step` (default config: clip_sample=True,
    i.e. clip_x0=1.0, set_alpha_to_one=True; SD 1.x: clip_sample=False,
    set_alpha_to_one=False, steps_offset=1) for the same eps and variance noise.
    diffusers takes t' = t - T // n; the loop passes the next grid timestep, the
    same thing for leading spacing (DDIM's default) and the true next step otherwise.

    Book: eq-ddim-step
    Paper: Song et al. 2021 (DDIM), eq. 12 and eq. 16
    """
    check_inputs(x_t, eps)
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0 (0 = DDIM, 1 = DDPM), got {eta!r}")
    final = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
    alpha_bar, alpha_bar_prev = (expand_like(a, x_t) for a in alpha_bar_pair(t, t_prev, schedule, final))
    c = ddim_coefficients(alpha_bar, alpha_bar_prev, eta)  # (B, 1, ...) each
    return ddim_update(x_t, eps, c, noise=fresh_noise(noise, x_t) if eta > 0 else None, clip_x0=clip_x0)


def coefficients(grid: Grid, schedule: Schedule, *, dtype=torch.float32, eta: float = 0.0,
                 set_alpha_to_one: bool = True, **options) -> DDIMCoefficients:
    """`ddim_coefficients` at every grid point, (n,) each, in `dtype` (that of x)."""
    final = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
    alpha_bar, alpha_bar_prev = (a.to(dtype) for a in alpha_bar_pair(*timestep_pairs(grid), schedule, final))
    return ddim_coefficients(alpha_bar, alpha_bar_prev, eta)


@torch.no_grad()
def ddim_invert(eps_model, x0: torch.Tensor, schedule: Schedule, num_inference_steps: int = 50, *, cond=None,
                uncond=None, guidance_scale: float = 1.0, spacing: str | None = None) -> torch.Tensor:
    r"""Run the deterministic DDIM update backwards, x_0 -> x_T, on the grid DDIM samples on.

    Each step reads the noise the model predicts at the current point and moves to the next, noisier
    grid point along the same straight line the sampler would come down:

    $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t')}{\sqrt{\bar\alpha_t}},\qquad
      x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\,\epsilon_\theta(x_t, t')$$

    with t < t' neighbours on the grid (x at t = 0 is x_0, alpha_bar = 1) and the model read at t', as
    diffusers' DDIMInverseScheduler does. DDIM (eta = 0) from the returned x_T on the same grid, with
    the same conditions and guidance, comes back close to x_0: the smaller each step, the closer.
    Guidance above 1 makes the inversion less exact (Mokady et al. 2023).
    Book: eq-ddim-inversion
    Paper: Song et al. 2021 (DDIM), section 4.3; Ramesh et al. 2022, section 3 (the bipartite latent)
    """
    check_guidance_scale(guidance_scale)
    grid = make_grid("ddim", num_inference_steps, schedule, spacing)  # the grid DDIM samples on
    model = CFGDenoiser(eps_model, cond, uncond, guidance_scale)
    alpha_bar = schedule.alphas_cumprod
    x, a_prev = x0, 1.0
    for t in grid.timesteps.flip(0).tolist():  # ascending
        a = float(alpha_bar[t])
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x0_hat = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
        x, a_prev = math.sqrt(a) * x0_hat + math.sqrt(1 - a) * eps, a
    return x


SAMPLER = register(Sampler(
    name="ddim",
    make_grid=make_integer_grid,
    coefficients=coefficients,
    update=ddim_update,
    default_spacing="leading",
    diffusers_class="DDIMScheduler",
    draws_noise=lambda grid, *, eta=0.0, **options: [eta > 0] * len(grid.timesteps),
    diffusers_config={"clip_sample": False, "set_alpha_to_one": True},
    webui_names={"DDIM": False},
    options=("eta", "set_alpha_to_one"),
    step=ddim_step,
))
