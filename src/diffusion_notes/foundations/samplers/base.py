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

# The callables below take and make `grids.Grid`s. This module imports nothing of the library:
# `grids.make_grid` reads the registry, so an import of `grids` here would close a circle.


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
    step(x_t, eps, t, t_prev, schedule, *, noise, clip_x0, state, **options) -> StepOutput, or None
        the same update as one flat function of (t, t_prev), for the chapters and the tests
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
    step: Callable | None = None  # the flat step function, e.g. `ddim.ddim_step`


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Add `sampler` to the registry; its name and its web-UI names must be new."""
    if sampler.name in SAMPLERS:
        raise ValueError(f"a sampler named {sampler.name!r} is already registered")
    for other in SAMPLERS.values():
        taken = set(sampler.webui_names) & set(other.webui_names)
        if taken:
            raise ValueError(f"the web-UI name {sorted(taken)[0]!r} of {sampler.name!r} is {other.name!r}'s already")
    SAMPLERS[sampler.name] = sampler
    return sampler


def get(name: str) -> Sampler:
    """The registered sampler called `name`, or a ValueError that lists them."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
