"""One latent denoising path for every picture: txt2img, img2img, inpainting, ControlNet and the web UI.

    plan = make_plan("dpmpp_2m", 25, schedule)                          # the grid a run visits
    z = denoise(model, plan, first)                                     # txt2img from x_T = first * scale
    z = denoise(model, plan, first, z0=z0, start_step=strength_start(25, 0.6))   # img2img (SDEdit)

`model(x, t) -> eps` carries the conditioning, guidance and any ControlNet; `first` is the run's
first N(0, I) draw (x_T, or the noise that takes z0 to the start). Where an img2img run starts is
the caller's convention: diffusers' strength rule (`strength_start`, the pipelines) or the web UI's
(`webui_start`); everything after that is the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from diffusion_notes.foundations.grids import (
    SIGMA_SAMPLERS,
    Grid,
    grid_from_sigmas,
    grid_index,
    make_grid,
    noise_to_grid_point,
    num_steps,
    step_sigmas,
)
from diffusion_notes.foundations.samplers import check_eta, init_noise_scale, loop, prepare_step, resolve_sampler
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.foundations.sigmas import churn_gammas, vp_scale

# The options each k-diffusion sampler function takes (its signature), with their defaults
CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
SAMPLER_OPTIONS = {"euler": CHURN, "heun": CHURN, "dpm2": CHURN, "euler_a": ("eta_ancestral", "s_noise"),
                   "dpm2_a": ("eta_ancestral", "s_noise"), "dpmpp_2m_sde": ("eta_ancestral", "s_noise")}
OPTION_DEFAULTS = {"eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}


class Plan(NamedTuple):
    """A sampler's run laid out before any noise is drawn: its grid, and how x_T is scaled."""

    sampler: str  # our name, resolved from a web-UI name
    grid: Grid
    schedule: Schedule
    init_scale: float  # the standard deviation of x_T in the DDPM scale (`init_noise_scale`)
    eta: float = 0.0
    set_alpha_to_one: bool = True
    options: tuple = ()  # k-diffusion's options for `prepare_step`, (name, value) pairs: eta_ancestral, s_noise


def check_sampler_options(sampler: str, options: dict) -> dict:
    """The k-diffusion options that differ from their defaults, or a ValueError: a bad value, or one `sampler` lacks."""
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}")
        if math.isinf(value) and key != "s_tmax":
            raise ValueError(f"{key} must be finite, got {value!r}")
    changed = {k: float(v) for k, v in options.items() if v != OPTION_DEFAULTS[k]}
    for key in changed:
        if key not in SAMPLER_OPTIONS.get(sampler, ()):
            takers = ", ".join(s for s, keys in SAMPLER_OPTIONS.items() if key in keys)
            raise ValueError(f"{key} applies to the {takers} samplers, not {sampler!r} (got {key}={options[key]})")
    if "eta_ancestral" in changed and changed["eta_ancestral"] > 1:
        raise ValueError(f"eta_ancestral must be in [0, 1], got {changed['eta_ancestral']}")
    return changed


def make_plan(sampler: str, num_inference_steps: int, schedule: Schedule, *, spacing: str | None = None,
              steps_offset: int = 0, use_karras_sigmas: bool | None = None, eta: float = 0.0,
              set_alpha_to_one: bool = True, sigmas: torch.Tensor | None = None, **sampler_options) -> Plan:
    """`sampler` (ours or a web-UI name) over n steps, with diffusers' options as `samplers.sample` takes them.

    `sigmas`, (n + 1,) noise levels from the top down, runs a k-diffusion sampler on them instead of
    its diffusers grid, calling the model at `sigmas.sigma_to_t` (`grids.grid_from_sigmas`): the web
    UI's schedules (Karras, Exponential, ...). `sampler_options` are k-diffusion's (`SAMPLER_OPTIONS`):
    eta_ancestral (its eta), s_churn, s_tmin, s_tmax and s_noise. Churn, or DPM2 a's eta, also runs on
    `sigmas`: the sampler's own grid's noise levels (`grids.step_sigmas`) unless given.
    """
    name, karras = resolve_sampler(sampler, use_karras_sigmas)
    check_eta(name, eta)
    unknown = set(sampler_options) - set(OPTION_DEFAULTS)
    if unknown:
        raise TypeError(f"make_plan got unknown options {sorted(unknown)}; it takes {', '.join(OPTION_DEFAULTS)}")
    options = check_sampler_options(name, sampler_options)
    churn = options.get("s_churn", 0) > 0
    if sigmas is None and not churn and not (name == "dpm2_a" and "eta_ancestral" in options):
        grid = make_grid(name, num_inference_steps, schedule, spacing, steps_offset, karras)
        return Plan(name, grid, schedule, init_noise_scale(name, spacing, grid), float(eta), set_alpha_to_one,
                    tuple(options.items()))
    if name not in SIGMA_SAMPLERS:
        raise ValueError(f"a schedule of noise levels works with the {', '.join(SIGMA_SAMPLERS)} samplers, "
                         f"not {sampler!r}")
    if sigmas is None:
        sigmas = step_sigmas(make_grid(name, num_inference_steps, schedule, spacing, steps_offset, karras))
    sigmas = _check_sigmas(sigmas)
    gammas = None
    if churn:
        keys = ("s_churn", "s_tmin", "s_tmax")
        gammas = churn_gammas(sigmas, *(options.get(k, OPTION_DEFAULTS[k]) for k in keys))  # (n,)
        gammas = gammas if bool((gammas > 0).any()) else None
    grid = grid_from_sigmas(name, sigmas, schedule, gammas=gammas,
                            eta_ancestral=options.get("eta_ancestral", 1.0))
    sigma_max = sigmas[0]
    init = float(sigma_max * vp_scale(sigma_max))  # x_T = sigma_max z in the variance-exploding scale
    return Plan(name, grid, schedule, init, float(eta), set_alpha_to_one, tuple(options.items()))


def _check_sigmas(sigmas) -> torch.Tensor:
    """(n + 1,) float64 noise levels, finite, >= 0, non-increasing, the first > 0; or a ValueError."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()) \
            or not sigmas[0] > 0 or bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError(f"sigmas must be n + 1 >= 2 finite noise levels >= 0 from the top down, got {sigmas.tolist()}")
    return sigmas


def strength_start(n: int, strength: float) -> int:
    """diffusers' img2img: redo int(n strength) of the n steps, so start at grid point n - int(n strength).

    strength 1 starts from pure noise at step 0; a start of n runs nothing and returns the input.
    """
    return n - min(int(n * strength), n)


def webui_start(n: int, denoising_strength: float) -> int:
    """The web UI's img2img: it runs int(min(d, 0.999) n) + 1 of the n steps, so start at n - that.

    Denoising strength 0 still runs the last step, and 1 runs all n but starts at the noised input.
    """
    return n - int(min(denoising_strength, 0.999) * n) - 1


@torch.no_grad()
def denoise(model, plan: Plan, first: torch.Tensor, *, z0: torch.Tensor | None = None, start_step: int = 0,
            noise: Callable | None = None, generator: torch.Generator | None = None,
            after_step: Callable | None = None, callback=None, clip_x0: float | None = None,
            progress: bool = False) -> torch.Tensor:
    """Denoise from where the run starts down to z_0 (B, C, h, w), with `samplers.loop`.

    txt2img (z0 None): x_T = first * plan.init_scale, where diffusers' pipelines start.
    img2img: z0 noised by `first` to where step `start_step` begins (`noise_to_grid_point`: SDEdit),
    and the loop runs the steps from there; a start at the last step's end returns z0 itself. A schedule
    that stops above sigma = 0 (KL Optimal) returns x_sigma = x_t / sqrt(alpha_bar) there, as k-diffusion does.
    `noise(i)` (or `generator`), `after_step`, `callback` and `progress` go to the loop.
    """
    n = num_steps(plan.grid)
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step <= n:
        raise ValueError(f"start_step must be an int in [0, {n}], got {start_step!r}")
    first_call = grid_index(plan.grid, start_step)  # the same, but for samplers that call the model twice a step
    if z0 is None:
        if start_step:
            raise ValueError("a run that starts part-way (start_step > 0) needs z0, the input to noise")
        x = first if plan.init_scale == 1.0 else first * plan.init_scale  # (B, C, h, w)
    elif start_step == n:
        return z0
    else:
        x = noise_to_grid_point(z0, first, plan.grid, first_call, plan.schedule).float()  # (B, C, h, w)
    step = prepare_step(plan.sampler, plan.grid, plan.schedule, plan.eta, plan.set_alpha_to_one, dtype=x.dtype,
                        **dict(plan.options))
    x = loop(model, x, plan.grid, step, noise=noise, generator=generator, after_step=after_step,
             callback=callback, start_step=first_call, clip_x0=clip_x0, progress=progress)
    end = 0.0 if plan.grid.sigmas is None else float(plan.grid.sigmas[-1])
    return x if end == 0 else x / float(vp_scale(torch.tensor(end)))  # a schedule ending above 0: x_sigma there
