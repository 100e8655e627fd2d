"""Samplers: turn a noise prediction into a slightly cleaner image, step by step.

Every sampler is a flat step function with one signature,

    step(x_t, eps, t, t_prev, schedule, *, noise=None, clip_x0=None, state=None) -> StepOutput

where eps is the model's prediction at (x_t, t), t_prev is the next (smaller)
timestep of the sampling grid (-1 after the last step), noise is fresh
N(0, I) noise for samplers that need it and state is a dict a multistep
solver may keep between calls. `sample` runs any registered step over a grid
from `make_timesteps`; a new sampler only has to be added to `SAMPLERS`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .device import randn
from .diffusion import _check_data, _check_same_shape, check_timesteps, q_posterior, x0_from_eps
from .schedules import Schedule, expand_like, make_schedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class StepOutput(NamedTuple):
    x_prev: torch.Tensor  # the sample at t_prev
    x0_hat: torch.Tensor  # the step's prediction of the clean data


def make_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "leading"
) -> torch.Tensor:
    """The descending grid of timesteps a sampler visits, as diffusers' `set_timesteps` makes it.

    "leading":  0, k, 2k, ... with k = T // n (DDPM's default), reversed
    "trailing": T - 1, T - 1 - T/n, ... rounded (always starts at the noisiest step)
    "linspace": n points evenly spaced over [0, T - 1], rounded, reversed
    (Lin et al. 2024, Table 2, compares the three.)
    """
    T, n = num_train_timesteps, num_inference_steps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be between 1 and {T}, got {n!r}")
    if spacing == "leading":
        timesteps = (np.arange(0, n) * (T // n)).round()[::-1]
    elif spacing == "trailing":
        # np.arange as diffusers calls it (its float rounding decides some steps); diffusers
        # keeps an extra last step, -1, for some n (e.g. 61): we keep the first n.
        timesteps = np.round(np.arange(T, 0, -T / n))[:n] - 1
    elif spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n).round()[::-1]
    else:
        raise ValueError(f"spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {spacing!r}")
    return torch.from_numpy(timesteps.astype(np.int64).copy())  # (n,)


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
    _check_data(x_t, "x_t")
    _check_same_shape(x_t, eps, "x_t", "eps")
    t_cpu = check_timesteps(t, schedule.num_train_timesteps).reshape(-1)  # (B,) or (1,)
    x0_hat = x0_from_eps(x_t, t, eps, schedule)  # (B, ...)
    if clip_x0 is not None:
        x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
    mean, variance = q_posterior(x0_hat, x_t, t, schedule, t_prev=t_prev)  # (B, ...), (B, 1, ...)
    if not (t_cpu > 0).any():
        return StepOutput(mean, x0_hat)
    if noise is None:
        noise = torch.randn_like(x_t)  # pass `noise` for reproducible samples
    _check_same_shape(x_t, noise, "x_t", "noise")
    has_noise = expand_like((t_cpu > 0).double(), x_t)  # (B, 1, ...): no noise where t = 0
    return StepOutput(mean + has_noise * variance.sqrt() * noise, x0_hat)


SAMPLERS = {"ddpm": ddpm_step}


def _infer_device(eps_model, x_T):
    if x_T is not None:
        return x_T.device
    parameters = getattr(eps_model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


@torch.no_grad()
def sample(
    eps_model,
    shape,
    sampler: str = "ddpm",
    num_inference_steps: int = 1000,
    schedule: Schedule | None = None,
    generator: torch.Generator | None = None,
    callback=None,
    device=None,
    x_T: torch.Tensor | None = None,
    clip_x0: float | None = None,
    cond=None,
    progress: bool = False,
    spacing: str = "leading",
) -> torch.Tensor:
    """Draw samples by running `sampler` from pure noise x_T down to x_0.

    The loop of Ho et al. 2020, Algorithm 2, on a grid of `num_inference_steps`
    timesteps (`make_timesteps(..., spacing)`):

        x = x_T ~ N(0, I)
        for t, t_prev in grid:
            eps = eps_model(x, t)                      # or eps_model(x, t, cond)
            x, x0_hat = step(x, eps, t, t_prev, schedule, noise=z)   # z ~ N(0, I) if t > 0
        return x

    Noise comes from `generator` through `device.randn` (drawn on the CPU,
    then moved), so a seed reproduces the same sample on every device and
    matches diffusers' DDPM pipeline with the same generator. `callback(i, t,
    x_t, x0_hat)` is called at every step with x_t before the step, for
    recording a denoising trace. `device` defaults to x_T's, else the model's
    parameters', else the CPU. `schedule` defaults to `make_schedule("linear")`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    step = SAMPLERS[sampler]
    schedule = make_schedule("linear") if schedule is None else schedule
    timesteps = make_timesteps(num_inference_steps, schedule.num_train_timesteps, spacing)  # (n,)
    shape = tuple(shape)
    device = torch.device(device) if device is not None else _infer_device(eps_model, x_T)
    if x_T is None:
        x = randn(shape, generator, device=device)  # (B, ...)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
        x = x_T.to(device)
    t_prevs = timesteps[1:].tolist() + [-1]
    steps = zip(timesteps.tolist(), t_prevs)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(timesteps), desc=f"{sampler} sampling")
    state: dict = {}
    for i, (t, t_prev) in enumerate(steps):
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)  # (B,)
        eps = eps_model(x, t_batch) if cond is None else eps_model(x, t_batch, cond)  # (B, ...)
        if eps.shape != x.shape:
            raise ValueError(
                f"eps_model must return a tensor shaped like x_t {tuple(x.shape)}, "
                f"got {tuple(eps.shape)}"
            )
        noise = randn(shape, generator, device=device, dtype=x.dtype) if t > 0 else None
        out = step(x, eps, t, t_prev, schedule, noise=noise, clip_x0=clip_x0, state=state)
        if callback is not None:
            callback(i, t, x, out.x0_hat)
        x = out.x_prev
    return x
