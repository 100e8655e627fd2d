r"""The forward process, its posterior, the three parameterisations and the training loss.

Notation (code name -> paper symbol):

    x0          x_0                  clean data
    x_t         x_t                  data after t + 1 forward steps (code t is paper t + 1)
    eps         epsilon              standard normal noise, eps ~ N(0, I)
    x0_hat      \hat x_0             a prediction of x0
    v           v                    alpha_t eps - sigma_t x0 (Salimans & Ho 2022)
    alpha_bar   \bar\alpha_t         `Schedule.alphas_cumprod[t]`

Every function takes t as a python int (same step for the whole batch) or a
(B,) long tensor (one step per example). `broadcast_at` gathers the schedule's
float64 values at t and casts them to the data's dtype and device; the
arithmetic then runs in the data's dtype, in the same order as diffusers, so
results agree with diffusers' schedulers to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion_notes.foundations.schedules import Schedule, broadcast_at, check_timestep_tensor, expand_like
from diffusion_notes.rng import per_item_randint, per_item_randn


def check_timesteps(t, num_train_timesteps: int) -> torch.Tensor:
    """Check that t is an int or a (B,) integer tensor in [0, T - 1]; return it as a CPU long tensor.

    Raises ValueError, e.g. "t must be integers in [0, 999], got [1000]".
    """
    return check_timestep_tensor(t, num_train_timesteps)


def _check_data(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a scalar")
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN values")


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


# --- the forward process ----------------------------------------------------------


def _signal_noise_scales(schedule: Schedule, t, like: torch.Tensor):
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), each shaped (B, 1, ..., 1) like `like`."""
    alpha_bar = broadcast_at(schedule.alphas_cumprod, t, like)  # (B, 1, ...)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def q_step(x_prev: torch.Tensor, t, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""One forward step: add a little noise to x_{t-1} (for t = 0, x_prev is the data x0).

    $$x_t = \sqrt{1 - \beta_t}\, x_{t-1} + \sqrt{\beta_t}\, \epsilon, \qquad \epsilon \sim \mathcal N(0, I)$$

    Book: eq-forward-step
    Paper: Ho et al. 2020, eq. 2
    """
    _check_data(x_prev, "x_prev")
    _check_same_shape(x_prev, noise, "x_prev", "noise")
    beta = broadcast_at(schedule.betas, t, x_prev)  # (B, 1, ...)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_sample(x0: torch.Tensor, t, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""Jump straight from x0 to x_t: the closed form of t forward steps.

    $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$$

    Book: eq-q-sample
    Paper: Ho et al. 2020, eq. 4
    """
    _check_data(x0, "x0")
    _check_same_shape(x0, noise, "x0", "noise")
    sqrt_ab, sqrt_one_minus_ab = _signal_noise_scales(schedule, t, x0)  # (B, 1, ...) each
    return sqrt_ab * x0 + sqrt_one_minus_ab * noise


def alpha_bar_pair(t, t_prev, schedule: Schedule, final: float = 1.0):
    """alpha_bar at t and at t_prev as (B,) float64 tensors; t_prev None means t - 1.

    t_prev = -1 means "after the last step" (the data): alpha_bar there is `final`, 1 unless
    DDIM's `set_alpha_to_one=False` says alpha_bar_0.
    """
    t = check_timestep_tensor(t, schedule.num_train_timesteps).reshape(-1)  # (B,)
    t_prev = (t - 1) if t_prev is None else torch.as_tensor(t_prev).to("cpu", torch.long).reshape(-1)  # (B,)
    if (t_prev < -1).any() or (t_prev >= t).any():
        raise ValueError(f"t_prev must be in [-1, t - 1], got t={t.tolist()}, t_prev={t_prev.tolist()}")
    alpha_bar = schedule.alphas_cumprod  # (T,)
    return alpha_bar[t], torch.where(t_prev >= 0, alpha_bar[t_prev.clamp(min=0)], final)


def posterior_coefficients(alpha_bar, alpha_bar_prev):
    """q_posterior's weights on x0 and x_t and its variance beta_tilde, elementwise in alpha_bar's dtype.

    The DDPM sampler's step (`samplers.ddpm`) is this posterior with x0_hat in place of x0.
    """
    alpha_t = alpha_bar / alpha_bar_prev
    beta_t = 1 - alpha_t
    coef_x0 = alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar)
    coef_xt = alpha_t.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta_t
    return coef_x0, coef_xt, variance


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, t, schedule: Schedule, t_prev=None):
    r"""Mean and variance of q(x_{t-1} | x_t, x0), the forward process run backwards.

    $$\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t} x_0
                  + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t} x_t, \qquad
      \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t$$

    With `t_prev` (default t - 1) the same formula jumps several steps:
    alpha_t := alpha_bar_t / alpha_bar_prev and beta_t := 1 - alpha_t. t_prev = -1
    means the jump to the data, alpha_bar_prev = 1 (then the mean is x0 and the variance 0).

    Returns (mean, variance); variance has shape (B, 1, ..., 1).

    Book: eq-posterior
    Paper: Ho et al. 2020, eq. 6-7
    """
    _check_data(x0, "x0")
    _check_data(x_t, "x_t")
    _check_same_shape(x0, x_t, "x0", "x_t")
    alpha_bar_t, alpha_bar_prev = (expand_like(a, x_t) for a in alpha_bar_pair(t, t_prev, schedule))  # (B, 1, ...)
    coef_x0, coef_xt, variance = posterior_coefficients(alpha_bar_t, alpha_bar_prev)  # (B, 1, ...) each
    mean = coef_x0 * x0 + coef_xt * x_t  # (B, ...)
    return mean, variance


# --- converting between x0, eps and v -------------------------------------------


def x0_from_eps(x_t: torch.Tensor, t, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""The data a noise prediction implies: solve q_sample for x0.

    $$\hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon}{\sqrt{\bar\alpha_t}}$$

    Book: eq-x0-from-eps
    Paper: Ho et al. 2020, eq. 15
    """
    _check_same_shape(x_t, eps, "x_t", "eps")
    alpha_bar = broadcast_at(schedule.alphas_cumprod, t, x_t)  # (B, 1, ...)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t: torch.Tensor, t, x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""The noise that takes x0 to x_t: solve q_sample for eps.

    $$\epsilon = \frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1 - \bar\alpha_t}}$$

    Book: eq-eps-from-x0
    Paper: Ho et al. 2020, eq. 4 solved for epsilon
    """
    _check_same_shape(x_t, x0, "x_t", "x0")
    sqrt_ab, sqrt_one_minus_ab = _signal_noise_scales(schedule, t, x_t)  # (B, 1, ...) each
    return (x_t - sqrt_ab * x0) / sqrt_one_minus_ab


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    r"""The velocity target, with alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t).

    $$v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1 - \bar\alpha_t}\,x_0$$

    Book: eq-v
    Paper: Salimans & Ho 2022, Sec. 4 and App. D
    """
    _check_same_shape(x0, eps, "x0", "eps")
    sqrt_ab, sqrt_one_minus_ab = _signal_noise_scales(schedule, t, x0)  # (B, 1, ...) each
    return sqrt_ab * eps - sqrt_one_minus_ab * x0


def x0_from_v(x_t: torch.Tensor, t, v: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""The data a v prediction implies.

    $$\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1 - \bar\alpha_t}\,v$$

    Book: eq-x0-from-v
    Paper: Salimans & Ho 2022, App. D
    """
    _check_same_shape(x_t, v, "x_t", "v")
    sqrt_ab, sqrt_one_minus_ab = _signal_noise_scales(schedule, t, x_t)  # (B, 1, ...) each
    return sqrt_ab * x_t - sqrt_one_minus_ab * v


def eps_from_v(x_t: torch.Tensor, t, v: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""The noise a v prediction implies.

    $$\hat\epsilon = \sqrt{1 - \bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v$$

    Book: eq-eps-from-v
    Paper: Salimans & Ho 2022, App. D
    """
    _check_same_shape(x_t, v, "x_t", "v")
    sqrt_ab, sqrt_one_minus_ab = _signal_noise_scales(schedule, t, x_t)  # (B, 1, ...) each
    return sqrt_one_minus_ab * x_t + sqrt_ab * v


# --- the training objective -------------------------------------------------------


def noise_prediction_loss(
    eps_model,
    x0: torch.Tensor,
    schedule: Schedule,
    *,
    t=None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    cond=None,
) -> torch.Tensor:
    r"""The simple DDPM loss: noise x0 to a random step and ask the model for the noise back.

    $$L_\text{simple} = \mathbb E_{t, x_0, \epsilon}\left[\left\|
      \epsilon - \epsilon_\theta\!\left(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon,\ t\right)
      \right\|^2\right]$$

    t ~ Uniform{0, ..., T - 1} and eps ~ N(0, I) are drawn (from `generator`
    if given) unless passed in. The model is called as `eps_model(x_t, t)`, or
    `eps_model(x_t, t, cond)` when `cond` is not None, with t a (B,) long
    tensor on x0's device. Returns the mean squared error, a scalar.

    Both draws are per item (`rng.per_item_randint`, `rng.per_item_randn`): in one process
    they are `torch.randint(0, T, (B,))` then `randn(x0.shape)`; in a data-parallel step
    (`rng.batch_shard`) every process draws them for the whole global batch and keeps its own
    rows, so P processes see exactly the t and eps that one process sees for the same rows.

    Book: eq-simple-loss
    Paper: Ho et al. 2020, eq. 14
    """
    _check_data(x0, "x0")
    B, T = x0.shape[0], schedule.num_train_timesteps
    if t is None:
        t = per_item_randint(0, T, B, generator)  # (B,) on the generator's device
    t = check_timesteps(t, T).reshape(-1)  # (B,) or (1,)
    if t.shape[0] not in (1, B):
        raise ValueError(f"t must be an int or have one entry per example ({B}), got {t.shape[0]}")
    t = t.expand(B).to(x0.device)  # (B,)
    if noise is None:
        noise = per_item_randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)  # (B, ...)
    _check_same_shape(x0, noise, "x0", "noise")
    x_t = q_sample(x0, t, noise, schedule)  # (B, ...)
    eps_hat = eps_model(x_t, t) if cond is None else eps_model(x_t, t, cond)  # (B, ...)
    _check_same_shape(noise, eps_hat, "noise", "the model's output")
    return F.mse_loss(eps_hat, noise)


# --- the theory under the loss: the bound's weights, Tweedie's formula, the score ----------


def elbo_weight(t, schedule: Schedule) -> torch.Tensor:
    r"""The weight the likelihood bound puts on step t's noise error, which `L_simple` sets to 1.

    With the reverse variance sigma_t^2 = beta_tilde_t (`q_posterior`'s), the bound's KL term is

    $$L_{t-1} = \lambda_t\,\lVert\epsilon - \epsilon_\theta(x_t, t)\rVert^2 + C,\qquad
      \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1 - \bar\alpha_t)}
                = \frac{\beta_t}{2\,\alpha_t\,(1 - \bar\alpha_{t-1})}$$

    t is a code timestep (an int or a (B,) tensor) in [1, T - 1]: at t = 0 (the paper's first step)
    the posterior variance is 0 and the bound's term is the decoder L_0, not a KL. Returns (B,) float64.

    Book: eq-elbo-weight
    Paper: Ho et al. 2020, eq. 12 (sigma_t^2 = beta_tilde_t, Sec. 3.2)
    """
    t = check_timesteps(t, schedule.num_train_timesteps).reshape(-1)  # (B,)
    if (t < 1).any():
        raise ValueError(
            f"t must be at least 1: at t = 0 the bound's term is the decoder L_0, not a KL; got {t.tolist()}"
        )
    beta, alpha, alpha_bar_prev = schedule.betas[t], schedule.alphas[t], schedule.alphas_cumprod[t - 1]  # (B,) each
    return beta / (2 * alpha * (1 - alpha_bar_prev))


def tweedie_x0(x_t: torch.Tensor, t, score: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""The posterior mean E[x0 | x_t] from the score of the noised data: Tweedie's formula.

    $$\mathbb E[x_0 \mid x_t] = \frac{x_t + (1 - \bar\alpha_t)\,\nabla_{x_t}\log p_t(x_t)}{\sqrt{\bar\alpha_t}}$$

    Exact for any data distribution, because q(x_t | x0) is Gaussian (`q_sample`).

    Book: eq-tweedie
    Paper: Efron 2011 (Tweedie's formula and selection bias), for q(x_t | x0) of Ho et al. 2020, eq. 4
    """
    _check_data(x_t, "x_t")
    _check_same_shape(x_t, score, "x_t", "score")
    alpha_bar = broadcast_at(schedule.alphas_cumprod, t, x_t)  # (B, 1, ...)
    return (x_t + (1 - alpha_bar) * score) / alpha_bar.sqrt()


def score_from_eps(eps: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    r"""The score of the noised data that a noise prediction implies: eps is a scaled score.

    $$\nabla_{x_t}\log p_t(x_t) = -\frac{\epsilon^*(x_t, t)}{\sqrt{1 - \bar\alpha_t}},
      \qquad \epsilon^*(x_t, t) = \mathbb E[\epsilon \mid x_t]$$

    For the minimiser eps* of `noise_prediction_loss` this is exact; for a trained eps_theta it is
    the model's estimate of the score.

    Book: eq-eps-score
    Paper: Dhariwal & Nichol 2021, Sec. 4.2; Song et al. 2021 (score SDE), Sec. 3-4
    """
    _check_data(eps, "eps")
    alpha_bar = broadcast_at(schedule.alphas_cumprod, t, eps)  # (B, 1, ...)
    return -eps / (1 - alpha_bar).sqrt()
