"""What a sampler is, in one place: `Sampler`, and the registry `SAMPLERS` every path reads.

A sampler module (`ddim.py`, `heun.py`, ...) builds one `Sampler` and calls `register` on it.
Everything the rest of the library needs to know about it sits on that object: the grid it
visits, the coefficients at each grid point, the update, where it draws noise, the scale of
its initial noise, its diffusers scheduler and the names the web UI shows for it.

One loop iteration is one model call. A sampler that calls the model twice per step (Heun,
DPM2) visits an interleaved grid, as its diffusers scheduler does, and keeps its first half's
derivative in `state`; `Grid.step_index` says which user-facing step each iteration belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from diffusion_notes.foundations.grids import Grid  # noqa: F401  (the type the callables below take)


@dataclass(frozen=True)
class Sampler:
    """One sampler, all of it. Callables take keyword options they may ignore (`**options`).

    make_grid(n, schedule, *, spacing, steps_offset, use_karras_sigmas) -> Grid
        the points the model is called at, exactly as diffusers' `set_timesteps` makes them
    coefficients(grid, schedule, *, dtype, eta, set_alpha_to_one) -> NamedTuple of (N,) tensors
        the schedule's scalars at each of the grid's N loop iterations
    update(x_t, eps, c, *, noise, clip_x0, state) -> StepOutput
        one iteration's tensor arithmetic, c one grid point's coefficients (floats)
    draws_noise(grid, *, eta) -> list[bool]
        whether iteration i takes fresh N(0, I) noise: exactly where diffusers draws it
    init_noise_scale(grid, spacing) -> float
        std of x_T in the DDPM scale, where diffusers' pipeline starts
    """

    name: str  # our key: "ddim", "euler_a", "heun"
    make_grid: Callable
    coefficients: Callable
    update: Callable
    default_spacing: str  # diffusers' default timestep_spacing for this scheduler
    diffusers_class: str  # e.g. "EulerDiscreteScheduler"
    draws_noise: Callable = lambda grid, **options: [False] * len(grid.timesteps)
    init_noise_scale: Callable = lambda grid, spacing: 1.0
    karras: bool = False  # accepts use_karras_sigmas=True
    diffusers_config: dict = field(default_factory=dict)  # extra scheduler kwargs, e.g. algorithm_type
    webui_names: dict = field(default_factory=dict)  # web-UI name -> use_karras_sigmas, {"Euler a": False}
    options: tuple = ()  # sampler-specific keyword options `sample` accepts, e.g. ("eta",)


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    if sampler.name in SAMPLERS:
        raise ValueError(f"a sampler named {sampler.name!r} is already registered")
    SAMPLERS[sampler.name] = sampler
    return sampler
