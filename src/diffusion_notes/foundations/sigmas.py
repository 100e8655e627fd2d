r"""Karras' noise levels: sigma at any timestep, Karras' spacing of them, and back to the DDPM scale.

    sigma       \sigma_t      sqrt((1 - alpha_bar) / alpha_bar), the noise level of x_t / sqrt(alpha_bar)
    x_sigma     x / s(t)      the variance-exploding sample x_t / sqrt(alpha_bar) = x0 + sigma eps

The sigma-based samplers (Euler, Euler a, DPM++ 2M), their grids (`grids`), guidance
and the oracle read sigma from here, float64 throughout. So do the web UI's schedules, k-diffusion's
lists of noise levels (Uniform, Karras, Exponential, ...), and the map between a noise level and the
fractional timestep the model is called at (`sigma_to_t`, `t_to_sigma`), linear in log sigma.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion_notes.foundations.schedules import Schedule


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


def vp_scale(sigma):
    """sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2): x_t = x_sigma * vp_scale(sigma)."""
    return (1 + sigma**2).rsqrt()


def ancestral_sigmas(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0):
    r"""sigma_up and sigma_down of an ancestral step from sigma to sigma_next, elementwise, float64.

    $$\sigma_\uparrow = \sqrt{\frac{\sigma'^2(\sigma^2 - \sigma'^2)}{\sigma^2}}, \qquad
      \sigma_\downarrow = \sqrt{\sigma'^2 - \sigma_\uparrow^2}$$

    A deterministic step to sigma_down followed by noise of std sigma_up lands at variance sigma'^2.
    `eta` scales sigma_up (at most sigma'); 0 makes the step deterministic.

    Paper: k-diffusion's `get_ancestral_step`; Karras et al. 2022 (EDM), Sec. 4
    """
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()
    if eta != 1:
        sigma_up = torch.minimum(sigma_next, eta * sigma_up)
    return sigma_up, (sigma_next**2 - sigma_up**2).sqrt()


def midpoint_sigma(sigma: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    r"""The geometric midpoint of a step, where DPM2 calls the model a second time, elementwise.

    $$\sigma_{\text{mid}} = \exp\tfrac12(\log\sigma + \log\sigma_{\text{to}}) = \sqrt{\sigma\,\sigma_{\text{to}}}$$

    i.e. the midpoint in lambda = -log sigma, DPM-Solver-2's r = 1/2.

    Paper: Lu et al. 2022 (DPM-Solver), Algorithm 1 (DPM-Solver-2, r_1 = 0.5); Karras et al. 2022, Sec. 3
    """
    return (sigma * sigma_to).sqrt()


# The web UI's schedules: n noise levels from sigma_max down, then 0 (n + 1 in all, float64), as
# k-diffusion's `get_sigmas_*` and the web UI's `sd_schedulers` make them. `schedule` gives the
# model's own sigmas, where a schedule reads them (`sigma_to_t`, `t_to_sigma`).


def sigma_range(schedule: Schedule) -> tuple[float, float]:
    """(sigma_min, sigma_max): the model's first and last training sigma, where the web UI's schedules end."""
    sigmas = schedule.sigmas()  # (T,) increasing in t
    return float(sigmas[0]), float(sigmas[-1])


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])  # (n + 1,)


def sigma_to_t(sigma, schedule: Schedule) -> torch.Tensor:
    r"""The fractional timestep of noise level `sigma`, linear in log sigma between training steps, float64.

    $$t = i + \frac{\log\sigma_i - \log\sigma}{\log\sigma_i - \log\sigma_{i+1}},
      \qquad \sigma_i \le \sigma \le \sigma_{i+1}$$

    clamped to [0, T - 1] outside the training sigmas. The t a k-diffusion sampler hands the UNet.

    Paper: k-diffusion's `DiscreteSchedule.sigma_to_t` (CompVisDenoiser, quantize=False)
    """
    log_sigmas = schedule.sigmas().log().numpy()  # (T,) increasing
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log().numpy()
    t = np.interp(log_sigma, log_sigmas, np.arange(len(log_sigmas)))  # np.interp clamps at both ends
    return torch.from_numpy(np.asarray(t, dtype=np.float64)).reshape(log_sigma.shape)


def t_to_sigma(t, schedule: Schedule) -> torch.Tensor:
    r"""The noise level at fractional timestep t, interpolated linearly in log sigma, float64 (`sigma_to_t`'s inverse).

    $$\log\sigma(t) = (1 - w)\log\sigma_{\lfloor t\rfloor} + w\log\sigma_{\lceil t\rceil},
      \qquad w = t - \lfloor t\rfloor$$

    Paper: k-diffusion's `DiscreteSchedule.t_to_sigma`
    """
    log_sigmas = schedule.sigmas().log()  # (T,)
    t = torch.as_tensor(t, dtype=torch.float64)
    low, high, w = t.floor().long(), t.ceil().long(), t - t.floor()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def uniform_sigmas(n: int, schedule: Schedule) -> torch.Tensor:
    r"""n noise levels at timesteps evenly spaced from T - 1 down to 0, then 0: the web UI's "Uniform".

    $$\sigma_i = \sigma\!\left(t_i\right), \qquad t_i = (T - 1)\left(1 - \tfrac{i}{n - 1}\right)$$

    Paper: k-diffusion's `DiscreteSchedule.get_sigmas(n)`; the web UI's `sd_schedulers.uniform`
    """
    T = schedule.num_train_timesteps
    return _append_zero(t_to_sigma(torch.linspace(T - 1, 0, n, dtype=torch.float64), schedule))


def sgm_uniform_sigmas(n: int, schedule: Schedule) -> torch.Tensor:
    r"""n timesteps evenly spaced from t(sigma_max) toward t(sigma_min), the last of n + 1 dropped: "SGM Uniform".

    $$t_i = t_{\max} + \tfrac{i}{n}\,(t_{\min} - t_{\max}), \quad i = 0, \dots, n - 1$$

    Paper: the web UI's `sd_schedulers.sgm_uniform` (SGM's, and diffusers' "trailing", spacing)
    """
    sigma_min, sigma_max = sigma_range(schedule)
    start, end = (float(sigma_to_t(s, schedule)) for s in (sigma_max, sigma_min))
    return _append_zero(t_to_sigma(torch.linspace(start, end, n + 1, dtype=torch.float64)[:-1], schedule))


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    r"""n noise levels evenly spaced in log sigma from sigma_max to sigma_min, then 0: "Exponential".

    $$\log\sigma_i = \log\sigma_{\max} + \tfrac{i}{n - 1}\left(\log\sigma_{\min} - \log\sigma_{\max}\right)$$

    Paper: k-diffusion's `get_sigmas_exponential`
    """
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def polyexponential_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 1.0) -> torch.Tensor:
    r"""n noise levels polynomial in log sigma, then 0: "Polyexponential" (rho = 1 is "Exponential").

    $$\log\sigma_i = \log\sigma_{\min}
      + \left(1 - \tfrac{i}{n - 1}\right)^{\rho}\left(\log\sigma_{\max} - \log\sigma_{\min}\right)$$

    Paper: k-diffusion's `get_sigmas_polyexponential`
    """
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho  # (n,)
    return _append_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def karras_schedule(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """`karras_sigmas` then 0, n + 1 in all: the web UI's "Karras" (k-diffusion's `get_sigmas_karras`)."""
    return _append_zero(karras_sigmas(sigma_min, sigma_max, n, rho))


def kl_optimal_sigmas(sigma_min: float, sigma_max: float, n: int) -> torch.Tensor:
    r"""n + 1 noise levels evenly spaced in arctan sigma, from sigma_max to sigma_min (no final 0): "KL Optimal".

    $$\sigma_i = \tan\!\left(\tfrac{i}{n}\arctan\sigma_{\min}
      + \left(1 - \tfrac{i}{n}\right)\arctan\sigma_{\max}\right), \quad i = 0, \dots, n$$

    Paper: Sabour et al. 2024 (Align Your Steps), the KL-optimal schedule; the web UI's `sd_schedulers.kl_optimal`
    """
    i = torch.arange(n + 1, dtype=torch.float64) / n  # (n + 1,)
    return torch.tan(i * math.atan(sigma_min) + (1 - i) * math.atan(sigma_max))


def simple_sigmas(n: int, schedule: Schedule) -> torch.Tensor:
    r"""Every (T / n)-th training sigma from the top, then 0: "Simple".

    $$\sigma_i = \sigma_{T - 1 - \lfloor i T / n\rfloor}, \quad i = 0, \dots, n - 1$$

    Paper: the web UI's `sd_schedulers.simple_scheduler`
    """
    sigmas = schedule.sigmas()  # (T,)
    T = len(sigmas)
    return _append_zero(torch.stack([sigmas[T - 1 - int(i * (T / n))] for i in range(n)]))


def ddim_sigmas(n: int, schedule: Schedule) -> torch.Tensor:
    r"""The training sigmas at t = 1, 1 + k, 1 + 2k, ... (k = T // n), top first, then 0: the web UI's "DDIM".

    Their count is ceil((T - 1) / k), which is n only when k divides T - 1 about right (n + 1 for
    T = 1000, n = 7).

    Paper: the web UI's `sd_schedulers.ddim_scheduler` (DDIM's "leading" grid with steps_offset 1)
    """
    sigmas = schedule.sigmas()  # (T,)
    k = max(len(sigmas) // n, 1)
    return _append_zero(sigmas[1::k].flip(0))


# Align Your Steps' 10-step noise levels for SD 1.5 (the web UI uses them for every model but SDXL).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


def align_your_steps_sigmas(n: int) -> torch.Tensor:
    r"""Align Your Steps' SD 1.5 sigmas, resampled to n by interpolating log sigma linearly, then 0.

    Paper: Sabour et al. 2024 (Align Your Steps), "loglinear_interp"; the web UI's `get_align_your_steps_sigmas`
    """
    if n == len(AYS_SD15):
        return _append_zero(torch.tensor(AYS_SD15, dtype=torch.float64))
    xs = np.linspace(0, 1, len(AYS_SD15))
    ys = np.log(np.array(AYS_SD15)[::-1])
    sigmas = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()  # (n,)
    return _append_zero(torch.from_numpy(sigmas))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    r"""n noise levels at the Beta(alpha, beta) distribution's quantiles, linear in sigma, then 0: "Beta".

    $$\sigma_i = \sigma_{\min}
      + F^{-1}_{\alpha,\beta}\!\left(1 - \tfrac{i}{n - 1}\right)(\sigma_{\max} - \sigma_{\min})$$

    alpha = beta = 0.6 are the web UI's defaults (its `beta_dist_alpha`, `beta_dist_beta` options).

    Paper: Lee et al. 2024 (Beta Sampling is All You Need); the web UI's `sd_schedulers.beta_scheduler`
    """
    from scipy import stats

    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)  # (n,)
    return _append_zero(torch.from_numpy(sigma_min + quantiles * (sigma_max - sigma_min)))


def churn_gammas(sigmas: torch.Tensor, s_churn: float, s_tmin: float = 0.0, s_tmax: float = math.inf) -> torch.Tensor:
    r"""Karras' stochastic "churn" at each of the n steps of (n + 1,) `sigmas`: how far each step raises sigma first.

    $$\gamma_i = \begin{cases}\min\!\left(\frac{S_\text{churn}}{n}, \sqrt2 - 1\right)
      & S_\text{tmin} \le \sigma_i \le S_\text{tmax}\\ 0 & \text{otherwise}\end{cases},
      \qquad \hat\sigma_i = (1 + \gamma_i)\,\sigma_i$$

    Paper: Karras et al. 2022 (EDM), Algorithm 2; k-diffusion's `sample_euler` (and `sample_heun`, `sample_dpm_2`)
    """
    sigma = sigmas[:-1]  # (n,)
    gamma = min(s_churn / len(sigma), 2**0.5 - 1)
    return torch.where((s_tmin <= sigma) & (sigma <= s_tmax), gamma, 0.0).to(torch.float64)
