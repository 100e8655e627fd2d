r"""The step functions: one noise prediction in, one slightly cleaner sample out.

Every step has the same signature,

    step(x_t, eps, t, t_prev, schedule, *, noise=None, clip_x0=None, state=None) -> StepOutput

and a step may add keyword-only options of its own after these (DDIM's `eta`),
each with a default, so any step can be called the same way. x_t is always in
the DDPM (variance-preserving) scale, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.

Each step is two halves. `*_coefficients` does the schedule's part: scalars that
depend on (t, t_prev) only, computed elementwise, for a batch's (B, 1, ...) tensors
or a whole grid's (n,) tensors at once. `*_update(x_t, eps, c, *, noise, clip_x0, state)`
does the tensors' part with those coefficients, (B, 1, ...) tensors or plain floats.
A step checks its inputs, computes its coefficients and calls its update; the
sampling loop (`samplers.loop`) computes every grid point's coefficients once,
before the loop, and calls the updates alone. DDPM's and DDIM's coefficients are
computed in x_t's dtype from alpha_bar (float32, as diffusers does: 1 / sqrt(alpha_bar)
amplifies any other rounding at large t); the sigma-based ones in float64, then rounded.

Notation (code name -> paper symbol):

    alpha_bar   \bar\alpha_t      signal kept at step t
    sigma       \sigma_t          Karras' noise level, sqrt((1 - alpha_bar) / alpha_bar)
    x_sigma     x / s(t)          the variance-exploding sample x_t / sqrt(alpha_bar) = x0 + sigma eps,
                                  the `sample` that diffusers' Euler schedulers carry
    lambda_     \lambda_t         log(alpha_t / sigma_t) of DPM-Solver (VP alpha_t, sigma_t) = -log(sigma)
    x0_hat      \hat x_0          the step's prediction of the clean data

Euler, Euler ancestral and DPM-Solver++ work with sigma. Their steps read it from
the sampler's sigma grid when `state` holds one (`state["sigmas"]`, (n + 1,)
with a final 0, and `state["step_index"]`), and otherwise from the schedule at
t and t_prev (interpolated for fractional t; sigma = 0 at t_prev = -1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffusion_notes.foundations.diffusion import _check_data, _check_same_shape, check_timesteps
from diffusion_notes.foundations.schedules import Schedule, expand_like


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # the sample at t_prev
    x0_hat: torch.Tensor  # the step's prediction of the clean data


def _check_inputs(x_t, eps):
    _check_data(x_t, "x_t")
    _check_same_shape(x_t, eps, "x_t", "eps")


def _clip(x0_hat, clip_x0):
    return x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)


def _per_example(c, like):
    """A tuple of (B,) or () float64 tensors -> (B, 1, ...) tensors in `like`'s dtype and device."""
    return type(c)(*(expand_like(v, like) if v.is_floating_point() else v for v in c))


def _noise(noise, x_t):
    if noise is None:
        return torch.randn_like(x_t)  # pass `noise` for reproducible samples
    _check_same_shape(x_t, noise, "x_t", "noise")
    return noise


# --- DDPM and DDIM: integer timesteps, alpha_bar from the schedule ----------------


def alpha_bar_pair(t, t_prev, schedule: Schedule, final: float = 1.0):
    """alpha_bar at t and t_prev as (B,) float64 tensors; alpha_bar_{-1} = `final` (1: "the data")."""
    t = check_timesteps(t, schedule.num_train_timesteps).reshape(-1)  # (B,)
    t_prev = torch.as_tensor(t_prev).to("cpu", torch.long).reshape(-1)  # (B,)
    if (t_prev < -1).any() or (t_prev >= t).any():
        raise ValueError(f"t_prev must be in [-1, t - 1], got t={t.tolist()}, t_prev={t_prev.tolist()}")
    alpha_bar = schedule.alphas_cumprod  # (T,)
    return alpha_bar[t], torch.where(t_prev >= 0, alpha_bar[t_prev.clamp(min=0)], final)


def _x0_from_eps(x_t, eps, c, clip_x0):
    """x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), clipped (`diffusion.x0_from_eps`)."""
    return _clip((x_t - c.sqrt_one_minus_alpha_bar * eps) / c.sqrt_alpha_bar, clip_x0)


class DDPMCoefficients(NamedTuple):
    sqrt_alpha_bar: torch.Tensor  # sqrt(alpha_bar_t)
    sqrt_one_minus_alpha_bar: torch.Tensor
    coef_x0: torch.Tensor  # the posterior mean's weight on x0_hat ...
    coef_xt: torch.Tensor  # ... and on x_t
    std: torch.Tensor  # sqrt(beta_tilde), the posterior's standard deviation


def ddpm_coefficients(alpha_bar, alpha_bar_prev) -> DDPMCoefficients:
    """`diffusion.q_posterior`'s coefficients for the jump t -> t_prev, elementwise, in alpha_bar's dtype."""
    alpha_t = alpha_bar / alpha_bar_prev
    beta_t = 1 - alpha_t
    coef_x0 = alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar)
    coef_xt = alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta_t
    return DDPMCoefficients(alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), coef_x0, coef_xt, variance.sqrt())


def ddpm_update(x_t, eps, c: DDPMCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`ddpm_step` given its coefficients; no noise is added when `noise` is None."""
    x0_hat = _x0_from_eps(x_t, eps, c, clip_x0)  # (B, ...)
    x_prev = c.coef_x0 * x0_hat + c.coef_xt * x_t
    return StepOutput(x_prev if noise is None else x_prev + c.std * noise, x0_hat)


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
    alpha_bar, alpha_bar_prev = (expand_like(a, x_t) for a in alpha_bar_pair(t, t_prev, schedule))  # (B, 1, ...)
    c = ddpm_coefficients(alpha_bar, alpha_bar_prev)  # (B, 1, ...) each
    has_noise = check_timesteps(t, schedule.num_train_timesteps).reshape(-1) > 0  # (B,): none where t = 0
    if not has_noise.any():
        return ddpm_update(x_t, eps, c, clip_x0=clip_x0)
    c = c._replace(std=c.std * expand_like(has_noise.double(), x_t))
    return ddpm_update(x_t, eps, c, noise=_noise(noise, x_t), clip_x0=clip_x0)


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
    x0_hat = _x0_from_eps(x_t, eps, c, clip_x0)  # (B, ...)
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
    _check_inputs(x_t, eps)
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0 (0 = DDIM, 1 = DDPM), got {eta!r}")
    final = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0]
    alpha_bar, alpha_bar_prev = (expand_like(a, x_t) for a in alpha_bar_pair(t, t_prev, schedule, final))
    c = ddim_coefficients(alpha_bar, alpha_bar_prev, eta)  # (B, 1, ...) each
    return ddim_update(x_t, eps, c, noise=_noise(noise, x_t) if eta > 0 else None, clip_x0=clip_x0)


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
    """sigma at t and at t_prev, float64: from the loop's sigma grid if `state` holds one, else the schedule."""
    if state is not None and "sigmas" in state:
        i = state["step_index"]
        sigma, sigma_prev = state["sigmas"][i], state["sigmas"][i + 1]
    else:
        sigma, sigma_prev = sigma_at(t, schedule), sigma_at(t_prev, schedule)
    return torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(sigma_prev, dtype=torch.float64)


def vp_scale(sigma):
    """sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2): x_t = x_sigma * vp_scale(sigma)."""
    return (1 + sigma**2).rsqrt()


class EulerCoefficients(NamedTuple):
    sigma: torch.Tensor
    dt: torch.Tensor  # sigma' - sigma (Euler) or sigma_down - sigma (Euler ancestral)
    scale: torch.Tensor  # sqrt(alpha_bar) at t ...
    scale_prev: torch.Tensor  # ... and at t_prev
    sigma_up: torch.Tensor  # the fresh noise's standard deviation (0 for Euler)


def euler_coefficients(sigma, sigma_prev) -> EulerCoefficients:
    """`euler_step`'s coefficients, elementwise on float64 tensors."""
    no_noise = torch.zeros_like(sigma)
    return EulerCoefficients(sigma, sigma_prev - sigma, vp_scale(sigma), vp_scale(sigma_prev), no_noise)


def euler_ancestral_coefficients(sigma, sigma_prev) -> EulerCoefficients:
    """`euler_ancestral_step`'s sigma_up and sigma_down, elementwise on float64 tensors."""
    sigma_up = (sigma_prev**2 * (sigma**2 - sigma_prev**2) / sigma**2).sqrt()
    sigma_down = (sigma_prev**2 - sigma_up**2).sqrt()
    return EulerCoefficients(sigma, sigma_down - sigma, vp_scale(sigma), vp_scale(sigma_prev), sigma_up)


def euler_update(x_t, eps, c: EulerCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    """`euler_step` (or, with sigma_up > 0 and `noise`, `euler_ancestral_step`) given its coefficients."""
    x_sigma = x_t / c.scale  # (B, ...)
    x0_hat = _clip(x_sigma - c.sigma * eps, clip_x0)
    derivative = (x_sigma - x0_hat) / c.sigma  # dx_sigma / dsigma
    x_sigma_prev = x_sigma + c.dt * derivative
    if noise is not None:
        x_sigma_prev = x_sigma_prev + c.sigma_up * noise
    return StepOutput(x_sigma_prev * c.scale_prev, x0_hat)


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
    c = _per_example(euler_coefficients(*_sigma_pair(t, t_prev, schedule, state)), x_t)  # (B, 1, ...) each
    return euler_update(x_t, eps, c, clip_x0=clip_x0)


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
    c = _per_example(euler_ancestral_coefficients(*_sigma_pair(t, t_prev, schedule, state)), x_t)
    return euler_update(x_t, eps, c, noise=_noise(noise, x_t), clip_x0=clip_x0)


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
    x0_hat = _clip((x_t - c.sigma_vp * eps) / c.alpha, clip_x0)  # (B, ...)
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

    Book: eq-dpmpp-2m
    Paper: Lu et al. 2022 (DPM-Solver++), Algorithm 2
    """
    _check_inputs(x_t, eps)
    sigma, sigma_prev = _sigma_pair(t, t_prev, schedule, state)
    history = state if state is not None else {}
    lambda_last = history.get("lambda_last", torch.tensor(float("nan"), dtype=torch.float64))
    c = dpmpp_2m_coefficients(sigma, sigma_prev, torch.as_tensor(lambda_last, dtype=torch.float64))
    history["lambda_last"] = c.lambda_
    c = _per_example(c, x_t)._replace(last=bool(c.last.all()))  # (B, 1, ...) each
    return dpmpp_2m_update(x_t, eps, c, clip_x0=clip_x0, state=history)
