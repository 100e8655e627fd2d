"""Samplers: turn a noise prediction into a slightly cleaner image, step by step.

Every sampler is a flat step function (in `sampler_steps`) with one signature,

    step(x_t, eps, t, t_prev, schedule, *, noise=None, clip_x0=None, state=None) -> StepOutput

where eps is the model's prediction at (x_t, t), t_prev is the next (smaller)
timestep of the sampling grid (-1 after the last step) and noise is fresh
N(0, I) noise for samplers that need it. A step is its coefficients (what the
schedule says at t and t_prev) and an update (the tensor arithmetic).

The sampling protocol, as k-diffusion's samplers have it:

    grid = make_grid(sampler, n, schedule)              # timesteps (and sigmas) to visit (`grids`)
    step = prepare_step(sampler, grid, schedule)        # each grid point's coefficients, once
    x = loop(model, x_T, grid, step, generator=g)       # model(x, t) -> eps, nothing else

Conditioning and guidance wrap the model (`guidance.CFGDenoiser`); `sample` is
the one-call front that builds all four from keyword options. A new sampler
needs a step in `SAMPLERS` and its update in `UPDATES`. x_t stays in the DDPM
(variance-preserving) scale throughout, for every sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from diffusion_notes.device import randn
from diffusion_notes.foundations.grids import DEFAULT_SPACING, Grid, make_grid
from diffusion_notes.foundations.guidance import CFGDenoiser, check_guidance_scale
from diffusion_notes.foundations.sampler_steps import (  # noqa: F401  (re-exported: the chapters import them from here)
    StepOutput,
    alpha_bar_pair,
    ddim_coefficients,
    ddim_step,
    ddim_update,
    ddpm_coefficients,
    ddpm_step,
    ddpm_update,
    dpmpp_2m_coefficients,
    dpmpp_2m_step,
    dpmpp_2m_update,
    euler_ancestral_coefficients,
    euler_ancestral_step,
    euler_coefficients,
    euler_step,
    euler_update,
    karras_sigmas,
    sigma_at,
    vp_scale,
)
from diffusion_notes.foundations.schedules import Schedule, make_schedule

SAMPLERS = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
    "euler": euler_step,
    "euler_a": euler_ancestral_step,
    "dpmpp_2m": dpmpp_2m_step,
}
class SamplerAlias(NamedTuple):
    sampler: str  # our name, a key of SAMPLERS
    use_karras_sigmas: bool
    diffusers_class: str  # the diffusers scheduler it equals


# The names the Stable Diffusion web UIs show, and what they are here and in diffusers.
SAMPLER_ALIASES = {
    "DDPM": SamplerAlias("ddpm", False, "DDPMScheduler"),
    "DDIM": SamplerAlias("ddim", False, "DDIMScheduler"),
    "Euler": SamplerAlias("euler", False, "EulerDiscreteScheduler"),
    "Euler a": SamplerAlias("euler_a", False, "EulerAncestralDiscreteScheduler"),
    "DPM++ 2M": SamplerAlias("dpmpp_2m", False, "DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": SamplerAlias("dpmpp_2m", True, "DPMSolverMultistepScheduler"),
}


def resolve_sampler(sampler, use_karras_sigmas):
    if sampler in SAMPLER_ALIASES:
        alias = SAMPLER_ALIASES[sampler]
        if use_karras_sigmas is not None and use_karras_sigmas != alias.use_karras_sigmas:
            raise ValueError(
                f"sampler {sampler!r} means use_karras_sigmas={alias.use_karras_sigmas}, "
                f"got use_karras_sigmas={use_karras_sigmas}"
            )
        return alias.sampler, alias.use_karras_sigmas
    if sampler not in SAMPLERS:
        aliases = ", ".join(repr(a) for a in SAMPLER_ALIASES)
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} (or a web-UI name: {aliases}), "
                         f"got {sampler!r}")
    return sampler, bool(use_karras_sigmas)


def _infer_device(eps_model, x_T):
    if x_T is not None:
        return x_T.device
    parameters = getattr(eps_model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


class PreparedStep(NamedTuple):
    """A sampler's update with its coefficients computed once for every point of a grid."""

    update: Callable  # update(x_t, eps, c, *, noise, clip_x0, state) -> StepOutput (`sampler_steps`)
    coefficients: list  # c at each grid point: a NamedTuple of floats
    draws_noise: list  # whether step i takes fresh N(0, I) noise: exactly where diffusers' scheduler draws it


UPDATES = {"ddpm": ddpm_update, "ddim": ddim_update, "euler": euler_update, "euler_a": euler_update,
           "dpmpp_2m": dpmpp_2m_update}


def prepare_step(sampler: str, grid: Grid, schedule: Schedule, eta: float = 0.0, set_alpha_to_one: bool = True,
                 dtype: torch.dtype = torch.float32) -> PreparedStep:
    """`sampler`'s step at every grid point, its coefficients computed at once on the grid's (n,) tensors.

    The same `*_coefficients` functions the step functions call, in the same dtypes (`dtype`,
    that of x, for DDPM and DDIM), so `loop` computes what `SAMPLERS[sampler]` would at each
    (t, t_prev) of the grid.
    """
    t = grid.timesteps  # (n,)
    n = len(t)
    if sampler in ("ddpm", "ddim"):
        t_prev = torch.cat([t[1:], t.new_tensor([-1])])  # (n,): the next grid point, -1 after the last
        final = 1.0 if set_alpha_to_one or sampler == "ddpm" else schedule.alphas_cumprod[0]
        alpha_bar, alpha_bar_prev = (a.to(dtype) for a in alpha_bar_pair(t, t_prev, schedule, final))  # (n,)
        c = ddpm_coefficients(alpha_bar, alpha_bar_prev) if sampler == "ddpm" else \
            ddim_coefficients(alpha_bar, alpha_bar_prev, eta)
    else:
        sigmas = grid.sigmas if grid.sigmas is not None else \
            torch.cat([sigma_at(t, schedule), torch.zeros(1, dtype=torch.float64)])  # (n + 1,)
        sigma, sigma_prev = sigmas[:-1], sigmas[1:]  # (n,) each
        if sampler == "dpmpp_2m":
            lambda_last = torch.cat([torch.full((1,), math.nan, dtype=torch.float64), -sigma[:-1].log()])
            c = dpmpp_2m_coefficients(sigma, sigma_prev, lambda_last)
        elif sampler == "euler":
            c = euler_coefficients(sigma, sigma_prev)
        else:
            c = euler_ancestral_coefficients(sigma, sigma_prev)
    coefficients = [type(c)(*values) for values in zip(*(v.tolist() for v in c))]  # n NamedTuples of floats
    draws_noise = {"ddpm": (t > 0).tolist(), "ddim": [eta > 0] * n, "euler_a": [True] * n}.get(sampler, [False] * n)
    return PreparedStep(UPDATES[sampler], coefficients, draws_noise)


def model_call(model, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
    """model(x, t) -> eps; a model with `takes_step = True` also gets the sampler step, model(x, t, step=k).

    The step is the user-facing one (`Grid.step_index`), so prompt editing never counts calls: a
    sampler that calls the model twice per step hands both calls the same step.
    """
    if getattr(model, "takes_step", False):
        return model(x, t, step=step)
    return model(x, t)


def generator_noise(generator: torch.Generator | None, like: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """noise(i) -> fresh N(0, I) shaped like `like`, drawn on the generator's device (the CPU without one), moved."""
    draw_device = generator.device if generator is not None else torch.device("cpu")

    def noise(i: int) -> torch.Tensor:
        z = torch.randn(like.shape, generator=generator, device=draw_device, dtype=like.dtype)  # (B, ...)
        return z if draw_device == like.device else z.to(like.device)

    return noise


def loop(model, x: torch.Tensor, grid: Grid, step: PreparedStep, *, noise: Callable | None = None,
         generator: torch.Generator | None = None, after_step: Callable | None = None, callback=None,
         start_step: int = 0, clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    """Run `step` over `grid` from x (at grid point `start_step`) down to x_0, as k-diffusion's samplers do.

        for i, t in enumerate(grid.timesteps):
            eps = model(x, t)                                            # (B,) t; model(x, t) -> eps only
            x, x0_hat = step.update(x, eps, step.coefficients[i], noise=noise(i))   # where it draws
            x = after_step(i, x)                                         # inpainting's blend, if any

    Conditioning and guidance live in the model (`guidance.CFGDenoiser`); a model with
    `takes_step = True` also gets the step index (`model_call`). The model gets t as (B,) long, or
    float32 on fractional grids. `noise(i)` gives step i's fresh N(0, I) (k-diffusion's
    `noise_sampler`); without it, noise comes from `generator` (`generator_noise`). `after_step(i,
    x_prev)` may replace x after step i. `callback(i, t, x_t, x0_hat)` sees x_t before each step.
    Everything that does not depend on x is done before the loop. A result holding NaN is a ValueError.
    """
    timesteps = grid.timesteps.tolist()
    steps = range(len(timesteps)) if grid.step_index is None else grid.step_index.tolist()
    B, device = x.shape[0], x.device
    model_dtype = torch.float32 if grid.timesteps.is_floating_point() else torch.long
    t_in = grid.timesteps.to(device, model_dtype)[:, None].expand(-1, B).contiguous().unbind(0)  # n x (B,)
    noise = generator_noise(generator, x) if noise is None else noise
    state: dict = {}  # what a multistep update keeps between steps
    indices = range(start_step, len(timesteps))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, total=len(timesteps), initial=start_step, desc="sampling")
    for i in indices:
        eps = model_call(model, x, t_in[i], steps[i])  # (B, ...)
        if eps.shape != x.shape:
            raise ValueError(
                f"eps_model must return a tensor shaped like x_t {tuple(x.shape)}, got {tuple(eps.shape)}"
            )
        z = noise(i).to(device, x.dtype) if step.draws_noise[i] else None
        x_prev, x0_hat = step.update(x, eps, step.coefficients[i], noise=z, clip_x0=clip_x0, state=state)
        if callback is not None:
            callback(i, timesteps[i], x, x0_hat)
        x = x_prev if after_step is None else after_step(i, x_prev)
    if torch.isnan(x).any():  # once per run, not per step: a solver's 0 * inf (DPM++ 2M with n = T) ends here
        raise ValueError(f"the sampler produced NaN values in x_0 ({len(timesteps)} steps)")
    return x


def init_noise_scale(sampler: str, spacing: str | None, grid: Grid) -> float:
    """The standard deviation of x_T in the DDPM scale, where diffusers' pipelines start.

    diffusers starts from x_T = z * `init_noise_sigma`, in its sampler's scale. That is 1 for
    DDPM, DDIM and DPM++ 2M. Its Euler schedulers carry x_sigma = x_t / sqrt(alpha_bar) and start
    at sigma_max z ("linspace", "trailing") or sqrt(1 + sigma_max^2) z ("leading"); in the
    DDPM scale, x = x_sigma / sqrt(1 + sigma_max^2), that is sigma_max / sqrt(1 + sigma_max^2),
    or 1.
    """
    spacing = DEFAULT_SPACING[sampler] if spacing is None else spacing
    if sampler not in ("euler", "euler_a") or spacing == "leading":
        return 1.0
    sigma_max = grid.sigmas.max()
    return float(sigma_max * vp_scale(sigma_max))


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
    spacing: str | None = None,
    *,
    uncond=None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    use_karras_sigmas: bool | None = None,
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    start_step: int = 0,
) -> torch.Tensor:
    """Draw samples by running `sampler` from pure noise x_T down to x_0.

    The loop of Ho et al. 2020, Algorithm 2, on the sampler's grid (`make_grid`):

        x = x_T ~ N(0, I)
        for t, t_prev in grid:
            eps = eps_model(x, t)                      # or eps_model(x, t, cond), or guided
            x, x0_hat = step(x, eps, t, t_prev, schedule, noise=z)   # z ~ N(0, I) if the step takes noise
        return x

    A thin front to `loop`: it wraps eps_model, cond, uncond and guidance_scale into one
    model(x, t) -> eps (`CFGDenoiser`), builds the grid (`make_grid`), the step's coefficients
    on it (`prepare_step`) and x_T, and runs `loop(model, x_T, grid, step)`.

    `sampler` is a key of `SAMPLERS` or a web-UI name from `SAMPLER_ALIASES`
    ("Euler a", "DPM++ 2M Karras", ...). `spacing=None` uses the sampler's
    diffusers default; `steps_offset` (leading spacing), `set_alpha_to_one` and
    `eta` (DDIM), `use_karras_sigmas` (Euler, DPM++ 2M) are diffusers' options.
    The model gets t as a (B,) long tensor, or float32 when the grid is
    fractional (Euler's linspace, Karras sigmas).

    Guidance: with guidance_scale != 1 and an unconditional `uncond` (same
    structure as `cond`), each step makes one model call on 2B examples, or two
    on B when B is large and x on the CPU, and combines them with `cfg_combine`
    (see `guidance.CFGDenoiser`).

    Noise comes from `generator` through `device.randn` (drawn on the CPU, then
    moved) at the steps where diffusers' scheduler draws it, so a seed
    reproduces a sample on every device and matches diffusers' loop with the
    same generator. Without `x_T`, x_T is z ~ N(0, I) (drawn first) times
    `init_noise_scale`: where diffusers' pipeline for the sampler starts. That is z
    itself, except for Euler and Euler a with "linspace" (their default) or "trailing"
    spacing: x_sigma = sigma_max z, i.e. x_T = z sigma_max / sqrt(1 + sigma_max^2) in the
    DDPM scale the loop keeps. A given `x_T` is used as it is, in the DDPM scale.
    `callback(i, t, x_t, x0_hat)` is called at every step with x_t before the step.
    `device` defaults to x_T's, else the model's parameters', else the CPU.
    `schedule` defaults to `make_schedule("linear")`.

    `start_step` > 0 skips the first grid points: x_T must then be x at
    timestep `grid.timesteps[start_step]` (see `noise_to_grid_point`). This is
    image-to-image (SDEdit), as diffusers' img2img pipelines run it.
    """
    sampler, use_karras_sigmas = resolve_sampler(sampler, use_karras_sigmas)
    check_guidance_scale(guidance_scale)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0 (0 = DDIM, 1 = DDPM's variance), got {eta!r}")
    if eta != 0 and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only, got eta={eta} with sampler {sampler!r}")
    schedule = make_schedule("linear") if schedule is None else schedule
    grid = make_grid(sampler, num_inference_steps, schedule, spacing, steps_offset, use_karras_sigmas)
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < len(grid.timesteps):
        raise ValueError(f"start_step must be an int in [0, {len(grid.timesteps) - 1}], got {start_step!r}")
    if start_step and x_T is None:
        raise ValueError("start_step > 0 needs x_T: the noised input at grid.timesteps[start_step]")
    model = CFGDenoiser(eps_model, cond, uncond, guidance_scale)  # model(x, t) -> eps
    shape = tuple(shape)
    device = torch.device(device) if device is not None else _infer_device(eps_model, x_T)
    if x_T is None:
        x = randn(shape, generator, device=device)  # (B, ...)
        scale = init_noise_scale(sampler, spacing, grid)
        x = x if scale == 1.0 else x * scale
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
        x = x_T.to(device)
    step = prepare_step(sampler, grid, schedule, float(eta), set_alpha_to_one, dtype=x.dtype)
    return loop(model, x, grid, step, generator=generator, clip_x0=clip_x0, callback=callback,
                start_step=start_step, progress=progress)


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
    grid = make_grid("ddim", num_inference_steps, schedule, spacing)
    model = CFGDenoiser(eps_model, cond, uncond, guidance_scale)
    alpha_bar = schedule.alphas_cumprod
    x, a_prev = x0, 1.0
    for t in grid.timesteps.flip(0).tolist():  # ascending
        a = float(alpha_bar[t])
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x0_hat = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
        x, a_prev = math.sqrt(a) * x0_hat + math.sqrt(1 - a) * eps, a
    return x
