"""Samplers: turn a noise prediction into a slightly cleaner image, step by step.

Each sampler is one module here (`ddpm`, `ddim`, `euler`, `euler_a`, `dpmpp_2m`) that builds one
`base.Sampler` and registers it in `base.SAMPLERS`: its grid, its coefficients, its update, where it
draws noise, the scale of its x_T, its diffusers scheduler and its web-UI names. Everything below,
the grids (`grids.make_grid`), the web UI and the diffusers bridge read the registry; adding a
sampler is its module and one more name in the import line below. Each module also keeps a flat
step function with one signature, for the chapters,

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
the one-call front that builds all four from keyword options. x_t stays in the DDPM
(variance-preserving) scale throughout, for every sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from diffusion_notes.device import randn
from diffusion_notes.foundations.diffusion import alpha_bar_pair  # noqa: F401  (re-exported for the chapters)
from diffusion_notes.foundations.grids import DEFAULT_SPACING, Grid, RegistryView, make_grid  # noqa: F401
from diffusion_notes.foundations.guidance import CFGDenoiser, check_guidance_scale

# The samplers, one module each: importing one registers it, in this order (the web UI's list's).
from . import ddpm, ddim, euler, euler_a, dpmpp_2m, lms, heun, dpm2, dpmpp_2m_sde, unipc, lcm  # noqa: F401

from diffusion_notes.foundations.samplers.base import SAMPLERS, Sampler, get, register  # noqa: F401
from diffusion_notes.foundations.samplers.common import StepOutput  # noqa: F401
from diffusion_notes.foundations.samplers.ddim import (  # noqa: F401
    ddim_coefficients,
    ddim_invert,
    ddim_step,
    ddim_update,
)
from diffusion_notes.foundations.samplers.ddpm import ddpm_coefficients, ddpm_step, ddpm_update  # noqa: F401
from diffusion_notes.foundations.samplers.dpmpp_2m import (  # noqa: F401
    dpmpp_2m_coefficients,
    dpmpp_2m_step,
    dpmpp_2m_update,
)
from diffusion_notes.foundations.samplers.euler import euler_coefficients, euler_step, euler_update  # noqa: F401
from diffusion_notes.foundations.samplers.euler_a import (  # noqa: F401
    euler_ancestral_coefficients,
    euler_ancestral_step,
)
from diffusion_notes.foundations.schedules import Schedule, make_schedule
from diffusion_notes.foundations.sigmas import karras_sigmas, sigma_at, vp_scale  # noqa: F401


class SamplerAlias(NamedTuple):
    sampler: str  # our name, a key of SAMPLERS
    use_karras_sigmas: bool
    diffusers_class: str  # the diffusers scheduler it equals


class _WebUINames(RegistryView):
    """web-UI name -> SamplerAlias, over every registered sampler's `webui_names`, read at each use."""

    def __init__(self):
        super().__init__(read=None)

    def _current(self) -> dict:
        return {ui: SamplerAlias(s.name, karras, s.diffusers_class)
                for s in SAMPLERS.values() for ui, karras in s.webui_names.items()}


# The names the Stable Diffusion web UIs show, and what they are here and in diffusers.
SAMPLER_ALIASES = _WebUINames()
UPDATES = RegistryView(lambda sampler: sampler.update)  # name -> update(x_t, eps, c, *, noise, clip_x0, state)


def resolve_sampler(sampler, use_karras_sigmas):
    """(our name, use_karras_sigmas) for our name or a web-UI name; a ValueError that lists them all."""
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

    update: Callable  # update(x_t, eps, c, *, noise, clip_x0, state) -> StepOutput (`Sampler.update`)
    coefficients: list  # c at each grid point: a NamedTuple of floats
    draws_noise: list  # whether step i takes fresh N(0, I) noise: exactly where diffusers' scheduler draws it
    # Karras' churn before step i's model call, (scale, std, scale_hat) or None; None: no churn anywhere
    churn: list | None = None


class Churn(NamedTuple):
    """Raise x from sigma to sigma_hat before a model call: x_sigma + std z, both in the DDPM scale's terms."""

    scale: float  # sqrt(alpha_bar) at sigma, where x sits
    std: float  # s_noise sqrt(sigma_hat^2 - sigma^2): the fresh noise's std in the variance-exploding scale
    scale_hat: float  # sqrt(alpha_bar) at sigma_hat, where the model is called


def churn_steps(grid: Grid, s_noise: float = 1.0) -> list | None:
    """Each loop iteration's `Churn` where a step begins (None at a two-call step's second call), or None.

    Paper: Karras et al. 2022 (EDM), Algorithm 2, lines 5-6; k-diffusion's `sample_euler`, `sample_heun`
    and `sample_dpm_2`, which draw this noise at every step, gamma > 0 or not
    """
    if grid.sigma_hat is None:
        return None
    sigma, hat = grid.sigmas[:-1], grid.sigma_hat  # (N,) each
    starts = [True] * len(hat) if grid.step_index is None else \
        [True] + (grid.step_index[1:] != grid.step_index[:-1]).tolist()
    std = s_noise * (hat**2 - sigma**2).clamp(min=0).sqrt()  # (N,)
    return [Churn(float(vp_scale(s)), float(d), float(vp_scale(h))) if start else None
            for s, d, h, start in zip(sigma, std, hat, starts)]


def prepare_step(sampler: str, grid: Grid, schedule: Schedule, eta: float = 0.0, set_alpha_to_one: bool = True,
                 dtype: torch.dtype = torch.float32, **options) -> PreparedStep:
    """`sampler`'s step at every grid point, its coefficients computed at once on the grid's (n,) tensors.

    The same `*_coefficients` functions the step functions call, in the same dtypes (`dtype`,
    that of x, for DDPM and DDIM), so `loop` computes what `SAMPLERS[sampler].step` would at each
    (t, t_prev) of the grid. `options` are k-diffusion's, for the samplers that read them
    (`eta_ancestral`, `s_noise`); a grid with `sigma_hat` also gets its churn (`churn_steps`).
    """
    s = get(sampler)
    c = s.coefficients(grid, schedule, dtype=dtype, eta=eta, set_alpha_to_one=set_alpha_to_one, **options)  # (n,)
    coefficients = [type(c)(*values) for values in zip(*(v.tolist() for v in c))]  # n NamedTuples of floats
    churn = churn_steps(grid, options.get("s_noise", 1.0))
    return PreparedStep(s.update, coefficients, s.draws_noise(grid, eta=eta, **options), churn)


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
    A step with Karras' churn (`step.churn`) first raises x to sigma_hat with fresh noise (`churn_steps`).
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
        if step.churn is not None and step.churn[i] is not None:  # Karras' churn: up to sigma_hat, fresh noise
            c = step.churn[i]
            z = noise(i).to(device, x.dtype)  # drawn at every step, as k-diffusion's samplers draw it
            x = x if c.std == 0 else (x / c.scale + c.std * z) * c.scale_hat
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

    diffusers starts from x_T = z * `init_noise_sigma`, in its sampler's scale: 1 for most
    (DDPM, DDIM, DPM++ 2M), but Euler's schedulers carry x_sigma = x_t / sqrt(alpha_bar)
    (`euler.euler_init_noise_scale`). `spacing=None` means the sampler's default.
    """
    s = get(sampler)
    return s.init_noise_scale(grid, s.default_spacing if spacing is None else spacing)


def check_eta(sampler: str, eta) -> None:
    """eta is a number >= 0, and not 0 only for a sampler that takes it (DDIM); `sampler` is our name."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0 (0 = DDIM, 1 = DDPM's variance), got {eta!r}")
    if eta != 0 and "eta" not in SAMPLERS[sampler].options:
        takers = " and ".join(name for name, s in SAMPLERS.items() if "eta" in s.options)
        raise ValueError(f"eta applies to the {takers} sampler only, got eta={eta} with sampler {sampler!r}")


def _check_options(sampler: str, guidance_scale, eta) -> None:
    """sample's checks of guidance_scale and eta, before the grid is made."""
    check_guidance_scale(guidance_scale)
    check_eta(sampler, eta)


def _check_start(start_step, grid: Grid, x_T) -> None:
    """start_step must be a grid point, and a start past the first needs the noised input x_T."""
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < len(grid.timesteps):
        raise ValueError(f"start_step must be an int in [0, {len(grid.timesteps) - 1}], got {start_step!r}")
    if start_step and x_T is None:
        raise ValueError("start_step > 0 needs x_T: the noised input at grid.timesteps[start_step]")


def _start(shape, x_T, generator, device, scale: float) -> torch.Tensor:
    """x_T on `device`: the given one (it must have `shape`), or z ~ N(0, I) from `generator` times `scale`."""
    shape = tuple(shape)
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
        return x_T.to(device)
    x = randn(shape, generator, device=device)  # (B, ...)
    return x if scale == 1.0 else x * scale


@torch.no_grad()
def sample(eps_model, shape, *, sampler: str = "ddpm", num_inference_steps: int = 1000,
           schedule: Schedule | None = None, generator: torch.Generator | None = None, callback=None, device=None,
           x_T: torch.Tensor | None = None, clip_x0: float | None = None, cond=None, uncond=None,
           guidance_scale: float = 1.0, progress: bool = False, start_step: int = 0,
           spacing: str | None = None, eta: float = 0.0, use_karras_sigmas: bool | None = None,
           steps_offset: int = 0, set_alpha_to_one: bool = True) -> torch.Tensor:
    """Draw samples by running `sampler` from pure noise x_T down to x_0 (Ho et al. 2020, Algorithm 2).

    A thin front to `loop`: it wraps eps_model, cond, uncond and guidance_scale into one
    model(x, t) -> eps (`CFGDenoiser`: one call on 2B examples, or two on B), builds the grid
    (`make_grid`), the step's coefficients on it (`prepare_step`) and x_T, and runs
    `loop(model, x_T, grid, step)`. `callback(i, t, x_t, x0_hat)` sees x_t before each step.

    `sampler` is a key of `SAMPLERS` or a web-UI name from `SAMPLER_ALIASES` ("Euler a",
    "DPM++ 2M Karras", ...). diffusers' options: `spacing` (None: the sampler's default),
    `steps_offset` (leading spacing), `eta` and `set_alpha_to_one` (DDIM), `use_karras_sigmas`.

    Noise comes from `generator` through `device.randn` (drawn on the CPU, then moved) where
    diffusers' scheduler draws it, so a seed gives diffusers' sample on every device. Without
    `x_T`, x_T is z ~ N(0, I) (drawn first) times `init_noise_scale`, where diffusers' pipeline
    starts; a given `x_T` is used as it is, in the DDPM scale. `device` defaults to x_T's, else
    the model's parameters', else the CPU; `schedule` to `make_schedule("linear")`.

    `start_step` > 0 skips the first grid points: x_T must then be x at timestep
    `grid.timesteps[start_step]` (`grids.noise_to_grid_point`): image-to-image (SDEdit).
    """
    sampler, use_karras_sigmas = resolve_sampler(sampler, use_karras_sigmas)
    _check_options(sampler, guidance_scale, eta)
    schedule = make_schedule("linear") if schedule is None else schedule
    grid = make_grid(sampler, num_inference_steps, schedule, spacing, steps_offset, use_karras_sigmas)
    _check_start(start_step, grid, x_T)
    model = CFGDenoiser(eps_model, cond, uncond, guidance_scale)  # model(x, t) -> eps
    device = torch.device(device) if device is not None else _infer_device(eps_model, x_T)
    scale = init_noise_scale(sampler, spacing, grid) if x_T is None else 1.0
    x = _start(shape, x_T, generator, device, scale)  # (B, ...)
    step = prepare_step(sampler, grid, schedule, float(eta), set_alpha_to_one, dtype=x.dtype)
    return loop(model, x, grid, step, generator=generator, clip_x0=clip_x0, callback=callback,
                start_step=start_step, progress=progress)
