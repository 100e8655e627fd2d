r"""The sampler step functions: one noise prediction in, one slightly cleaner sample out.

Every step has the same signature,

    step(x_t, eps, t, t_prev, schedule, *, noise=None, clip_x0=None, state=None) -> StepOutput

and a step may add keyword-only options of its own after these (DDIM's `eta`),
each with a default, so any step can be called the same way. x_t is always in
the DDPM (variance-preserving) scale, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.

Notation (code name -> paper symbol):

    alpha_bar   \bar\alpha_t      signal kept at step t
    sigma       \sigma_t          Karras' noise level, sqrt((1 - alpha_bar) / alpha_bar)
    x_sigma     x / s(t)          the variance-exploding sample x_t / sqrt(alpha_bar) = x0 + sigma eps,
                                  the `sample` that diffusers' Euler schedulers carry
    lambda_     \lambda_t         log(alpha_t / sigma_t) of DPM-Solver (VP alpha_t, sigma_t) = -log(sigma)
    x0_hat      \hat x_0          the step's prediction of the clean data

Euler, Euler ancestral and DPM-Solver++ work with sigma. Their steps read it from
the sampler's sigma grid when `sample` passes one in `state` (`state["sigmas"]`,
(n + 1,) with a final 0, and `state["step_index"]`), and otherwise from the
schedule at t and t_prev (interpolated for fractional t; sigma = 0 at t_prev = -1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffusion_notes.foundations.diffusion import (
    _check_data,
    _check_same_shape,
    check_timesteps,
    q_posterior,
    x0_from_eps,
)
from diffusion_notes.foundations.schedules import Schedule, broadcast_at, expand_like


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # the sample at t_prev
    x0_hat: torch.Tensor  # the step's prediction of the clean data


def _check_inputs(x_t, eps):
    _check_data(x_t, "x_t")
    _check_same_shape(x_t, eps, "x_t", "eps")


def _clip(x0_hat, clip_x0):
    return x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)


# --- DDPM and DDIM: integer timesteps, alpha_bar from the schedule ----------------


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
    $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta\right) + \sigma_t z$.
    `clip_x0` clamps x0_hat to [-clip_x0, clip_x0] first (diffusers' `clip_sample`).
    The variance is the posterior's, beta_tilde ("fixed_small"). Equals diffusers'
    `DDPMScheduler.step` given the same eps and noise.

    Book: eq-ddpm-step
    Paper: Ho et al. 2020, Algorithm 2 and eq. 11
    """
    _check_inputs(x_t, eps)
    t_cpu = check_timesteps(t, schedule.num_train_timesteps).reshape(-1)  # (B,) or (1,)
    x0_hat = _clip(x0_from_eps(x_t, t, eps, schedule), clip_x0)  # (B, ...)
    mean, variance = q_posterior(x0_hat, x_t, t, schedule, t_prev=t_prev)  # (B, ...), (B, 1, ...)
    if not (t_cpu > 0).any():
        return StepOutput(mean, x0_hat)
    if noise is None:
        noise = torch.randn_like(x_t)  # pass `noise` for reproducible samples
    _check_same_shape(x_t, noise, "x_t", "noise")
    has_noise = expand_like((t_cpu > 0).double(), x_t)  # (B, 1, ...): no noise where t = 0
    return StepOutput(mean + has_noise * variance.sqrt() * noise, x0_hat)


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
    _check_inputs(x_t, eps)
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0 (0 = DDIM, 1 = DDPM), got {eta!r}")
    T = schedule.num_train_timesteps
    t_cpu = check_timesteps(t, T).reshape(-1)  # (B,) or (1,)
    t_prev = torch.as_tensor(t_prev).to("cpu", torch.long).reshape(-1)  # (B,) or (1,)
    if (t_prev < -1).any() or (t_prev >= t_cpu).any():
        raise ValueError(f"t_prev must be in [-1, t - 1], got t={t_cpu.tolist()}, t_prev={t_prev.tolist()}")
    final = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
    alpha_bar_prev = torch.where(t_prev >= 0, schedule.alphas_cumprod[t_prev.clamp(min=0)], final)  # (B,)
    alpha_bar = broadcast_at(schedule.alphas_cumprod, t_cpu, x_t)  # (B, 1, ...)
    alpha_bar_prev = expand_like(alpha_bar_prev, x_t)  # (B, 1, ...)
    x0_hat = _clip((x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt(), clip_x0)  # (B, ...)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    std = eta * variance.sqrt()  # (B, 1, ...)
    x_prev = alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev - std**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            noise = torch.randn_like(x_t)  # pass `noise` for reproducible samples
        _check_same_shape(x_t, noise, "x_t", "noise")
        x_prev = x_prev + std * noise
    return StepOutput(x_prev, x0_hat)


# --- sigma-based samplers: Euler, Euler ancestral, DPM-Solver++ -----------------


def sigma_at(t, schedule: Schedule) -> torch.Tensor:
    """Karras' sigma at a (possibly fractional) timestep, as float64: linear in t between steps.

    t = -1 means "after the last step", sigma = 0. Fractional t is
    interpolated linearly, as diffusers' Euler schedulers do (np.interp).
    """
    sigmas = schedule.sigmas()  # (T,)
    t = torch.as_tensor(t, dtype=torch.float64)
    T = schedule.num_train_timesteps
    if (t < -1).any() or (t > T - 1).any() or ((t < 0) & (t != -1)).any():
        raise ValueError(f"t must be -1 or in [0, {T - 1}], got {t.tolist()}")
    lo = t.clamp(min=0).floor().long()
    hi = (lo + 1).clamp(max=T - 1)
    w = t.clamp(min=0) - lo
    sigma = (1 - w) * sigmas[lo] + w * sigmas[hi]
    return torch.where(t == -1, torch.zeros_like(sigma), sigma)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    r"""n noise levels from sigma_max down to sigma_min, spaced evenly in sigma^(1/rho), float64.

    $$\sigma_i = \left(\sigma_{\max}^{1/\rho} + \tfrac{i}{n-1}\left(\sigma_{\min}^{1/\rho}
               - \sigma_{\max}^{1/\rho}\right)\right)^\rho$$

    Book: eq-karras-sigmas
    Paper: Karras et al. 2022 (EDM), eq. 5 (rho = 7)
    """
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)  # (n,)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho  # (n,)


def _sigma_pair(t, t_prev, schedule, state):
    """sigma at t and at t_prev: from the loop's sigma grid if `state` holds one, else from the schedule."""
    if state is not None and "sigmas" in state:
        i = state["step_index"]
        return state["sigmas"][i], state["sigmas"][i + 1]
    return sigma_at(t, schedule), sigma_at(t_prev, schedule)


def _vp_scale(sigma, like):
    """1 / sqrt(1 + sigma^2) = sqrt(alpha_bar), shaped (B, 1, ...) like `like`."""
    return expand_like((1 + torch.as_tensor(sigma, dtype=torch.float64) ** 2).rsqrt(), like)


def euler_step(
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
    r"""One Euler step of the probability-flow ODE, in sigma, from t to t_prev.

    In the variance-exploding view x_sigma = x_t / sqrt(alpha_bar) = x0 + sigma eps,
    dx_sigma / dsigma = eps, so

    $$\hat x_0 = x_\sigma - \sigma\,\epsilon_\theta, \qquad
      x_{\sigma'} = x_\sigma + (\sigma' - \sigma)\,\frac{x_\sigma - \hat x_0}{\sigma}$$

    and x_prev = x_{sigma'} sqrt(alpha_bar'), back in the DDPM scale. Deterministic;
    `noise` is ignored. Equals diffusers' `EulerDiscreteScheduler.step` (default
    config, and SD 1.x's scaled_linear betas; with `use_karras_sigmas`) once its
    sample is divided by sqrt(1 + sigma^2), which is what its `scale_model_input` does.

    Book: eq-pf-ode
    Paper: Karras et al. 2022 (EDM), Algorithm 1 without the Heun correction
    """
    _check_inputs(x_t, eps)
    sigma, sigma_prev = _sigma_pair(t, t_prev, schedule, state)
    scale, scale_prev = _vp_scale(sigma, x_t), _vp_scale(sigma_prev, x_t)  # (B, 1, ...) each
    sigma, sigma_prev = expand_like(torch.as_tensor(sigma), x_t), expand_like(torch.as_tensor(sigma_prev), x_t)
    x_sigma = x_t / scale  # (B, ...)
    x0_hat = _clip(x_sigma - sigma * eps, clip_x0)
    derivative = (x_sigma - x0_hat) / sigma
    x_sigma_prev = x_sigma + (sigma_prev - sigma) * derivative
    return StepOutput(x_sigma_prev * scale_prev, x0_hat)


def euler_ancestral_step(
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
    r"""One Euler ancestral step: an Euler step down to sigma_down, then fresh noise up to sigma'.

    $$\sigma_\uparrow = \sqrt{\frac{\sigma'^2(\sigma^2 - \sigma'^2)}{\sigma^2}}, \quad
      \sigma_\downarrow = \sqrt{\sigma'^2 - \sigma_\uparrow^2}, \quad
      x_{\sigma'} = x_\sigma + (\sigma_\downarrow - \sigma)\frac{x_\sigma - \hat x_0}{\sigma}
                    + \sigma_\uparrow z$$

    in the variance-exploding scale (see `euler_step`), z = `noise` (needed at
    every step; the last step multiplies it by sigma_up = 0). Equals diffusers'
    `EulerAncestralDiscreteScheduler.step` (default config and SD 1.x's betas)
    after dividing its sample by sqrt(1 + sigma^2), given the same noise.

    Book: eq-euler-ancestral
    Paper: Karras et al. 2022 (EDM), Sec. 4 (ancestral sampling); k-diffusion's sample_euler_ancestral
    """
    _check_inputs(x_t, eps)
    sigma, sigma_prev = _sigma_pair(t, t_prev, schedule, state)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sigma_prev = torch.as_tensor(sigma_prev, dtype=torch.float64)
    sigma_up = (sigma_prev**2 * (sigma**2 - sigma_prev**2) / sigma**2).sqrt()
    sigma_down = (sigma_prev**2 - sigma_up**2).sqrt()
    scale, scale_prev = _vp_scale(sigma, x_t), _vp_scale(sigma_prev, x_t)  # (B, 1, ...) each
    sigma, sigma_down = expand_like(sigma, x_t), expand_like(sigma_down, x_t)  # (B, 1, ...)
    x_sigma = x_t / scale  # (B, ...)
    x0_hat = _clip(x_sigma - sigma * eps, clip_x0)
    x_sigma_prev = x_sigma + (sigma_down - sigma) * (x_sigma - x0_hat) / sigma
    if noise is None:
        noise = torch.randn_like(x_t)  # pass `noise` for reproducible samples
    _check_same_shape(x_t, noise, "x_t", "noise")
    x_sigma_prev = x_sigma_prev + expand_like(sigma_up, x_t) * noise
    return StepOutput(x_sigma_prev * scale_prev, x0_hat)


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

    Book: eq-dpmpp-2m
    Paper: Lu et al. 2022 (DPM-Solver++), Algorithm 2
    """
    _check_inputs(x_t, eps)
    sigma, sigma_prev = _sigma_pair(t, t_prev, schedule, state)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sigma_prev = torch.as_tensor(sigma_prev, dtype=torch.float64)
    alpha, alpha_prev = _vp_scale(sigma, x_t), _vp_scale(sigma_prev, x_t)  # (B, 1, ...) each
    x0_hat = _clip((x_t - expand_like(sigma, x_t) * alpha * eps) / alpha, clip_x0)  # (B, ...)
    history = state if state is not None else {}
    x0_last, lambda_last = history.get("x0_hat_last"), history.get("lambda_last")
    lambda_ = -sigma.log()  # log(alpha_t / sigma_t) = -log(sigma)
    history["x0_hat_last"], history["lambda_last"] = x0_hat, lambda_
    if bool((sigma_prev == 0).all()):
        return StepOutput(x0_hat, x0_hat)  # the last step lands on the prediction
    lambda_prev = -sigma_prev.log()
    h = lambda_prev - lambda_
    D = x0_hat
    if x0_last is not None:
        r = (lambda_ - lambda_last) / h
        D = x0_hat + expand_like(0.5 / r, x_t) * (x0_hat - x0_last)
    ratio = expand_like(sigma_prev / sigma, x_t) * alpha_prev / alpha  # sigma_{t'} / sigma_t (VP)
    x_prev = ratio * x_t - alpha_prev * expand_like(torch.expm1(-h), x_t) * D
    return StepOutput(x_prev, x0_hat)
