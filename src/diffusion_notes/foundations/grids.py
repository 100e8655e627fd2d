"""The grid a sampler visits: its timesteps (and noise levels), exactly as its diffusers scheduler's `set_timesteps`.

`make_grid(sampler, n, schedule)` gives the n timesteps the model is called at, in descending order, and
for the sigma-based samplers (Euler, Euler a, DPM++ 2M) the n + 1 noise levels ending in 0, with
diffusers' spacings ("leading", "trailing", "linspace"), `steps_offset` and Karras sigmas. It reads the
sampler from the registry (`samplers.base.SAMPLERS`): each sampler's module builds its own grid from
the parts here (`make_timesteps`, `_sigma_grid`). `noise_to_grid_point` noises clean data to one of
a grid's points: where image-to-image starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import torch

from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.foundations.sigmas import ancestral_sigmas, karras_sigmas, midpoint_sigma, sigma_at, sigma_to_t


class RegistryView(Mapping):
    """sampler name -> `read(sampler)` for every registered sampler that `keep` selects, read at each use.

    A sampler registered later (a new module, or one a test registers) is in the view at once.
    The registry is imported when first read: importing it runs `samplers/__init__.py`, which
    registers every sampler module, and that package imports this module.
    """

    def __init__(self, read: Callable, keep: Callable = lambda sampler: True):
        self.read, self.keep = read, keep

    def _current(self) -> dict:
        from diffusion_notes.foundations.samplers.base import SAMPLERS

        return {name: self.read(s) for name, s in SAMPLERS.items() if self.keep(s)}

    def __getitem__(self, name):
        return self._current()[name]

    def __iter__(self):
        return iter(self._current())

    def __len__(self):
        return len(self._current())

    def __repr__(self):
        return repr(self._current())


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# Each sampler's default timestep spacing: that of its diffusers scheduler.
DEFAULT_SPACING = RegistryView(lambda sampler: sampler.default_spacing)
# The samplers that accept use_karras_sigmas=True (name -> Sampler).
KARRAS_SAMPLERS = RegistryView(lambda sampler: sampler, keep=lambda sampler: sampler.karras)


def _check_steps(n, T):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be between 1 and {T}, got {n!r}")


def _check_spacing(spacing):
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got {spacing!r}")


def _check_offset(timesteps, steps_offset, T):
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an int >= 0, got {steps_offset!r}")
    if len(timesteps) and timesteps.max() > T - 1:
        raise ValueError(
            f"steps_offset={steps_offset} moves the grid to timestep {int(timesteps.max())}, "
            f"past the last training step {T - 1}"
        )


def make_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """The descending grid of timesteps DDPM and DDIM visit, as diffusers' `set_timesteps` makes it.

    "leading":  0, k, 2k, ... with k = T // n (DDPM's default), reversed, plus `steps_offset`
                (Stable Diffusion's configuration uses steps_offset=1: 981, 961, ..., 1 for n = 50)
    "trailing": T - 1, T - 1 - T/n, ... rounded (always starts at the noisiest step)
    "linspace": n points evenly spaced over [0, T - 1], rounded, reversed
    (Lin et al. 2024, Table 2, compares the three.) `steps_offset` applies to "leading" only, as in diffusers.
    """
    T, n = num_train_timesteps, num_inference_steps
    _check_steps(n, T)
    _check_spacing(spacing)
    if spacing == "leading":
        timesteps = (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        # np.arange as diffusers calls it (its float rounding decides some steps); diffusers
        # keeps an extra last step, -1, for some n (e.g. 61): we keep the first n.
        timesteps = np.round(np.arange(T, 0, -T / n))[:n] - 1
    else:
        timesteps = np.linspace(0, T - 1, n).round()[::-1]
    _check_offset(timesteps, steps_offset, T)
    return torch.from_numpy(timesteps.astype(np.int64).copy())  # (n,)


class Grid(NamedTuple):
    timesteps: torch.Tensor  # (n,) what the model is called at: long, or float64 when fractional
    sigmas: torch.Tensor | None  # (n + 1,) float64 noise levels ending in 0, for sigma-based samplers
    # (N,) long: the user-facing step each loop iteration belongs to, for samplers that call the model
    # twice per step (Heun, DPM2 visit 2n - 1 points); None means iteration i is step i
    step_index: torch.Tensor | None = None
    # (N,) float64: the noise level the model is called at, where Karras' churn raises it above the
    # grid's sigma before a step (`grid_from_sigmas`); None means sigmas[:-1]
    sigma_hat: torch.Tensor | None = None


def _sigma_grid(timesteps, schedule, use_karras_sigmas, karras_range):
    """sigma at each grid timestep plus a final 0; with Karras, Karras' sigmas and their timesteps."""
    sigmas = schedule.sigmas().numpy()  # (T,) increasing in t
    at_grid = np.interp(timesteps, np.arange(len(sigmas)), sigmas)  # (n,)
    if not use_karras_sigmas:
        return timesteps, np.concatenate([at_grid, [0.0]])
    lo, hi = (at_grid[-1], at_grid[0]) if karras_range == "grid" else (sigmas[0], sigmas[-1])
    k = karras_sigmas(float(lo), float(hi), len(timesteps)).numpy()  # (n,)
    # invert sigma(t), linear in log sigma between training steps (diffusers' _sigma_to_t)
    timesteps = np.interp(np.log(k), np.log(sigmas), np.arange(len(sigmas)))  # (n,) fractional
    return timesteps, np.concatenate([k, [0.0]])


def make_grid(
    sampler: str,
    num_inference_steps: int,
    schedule: Schedule,
    spacing: str | None = None,
    steps_offset: int = 0,
    use_karras_sigmas: bool = False,
) -> Grid:
    """The timesteps (and noise levels) `sampler` visits: exactly its diffusers scheduler's `set_timesteps`.

    `sampler` is a registered sampler's name; its module's `make_grid` says what its grid is
    (e.g. `samplers.euler.make_euler_grid`). `spacing=None` picks the sampler's default
    (`DEFAULT_SPACING`, its diffusers scheduler's); `use_karras_sigmas` needs a sampler that
    accepts it (`KARRAS_SAMPLERS`).
    """
    from diffusion_notes.foundations.samplers.base import get

    s = get(sampler)
    if use_karras_sigmas and not s.karras:
        raise ValueError(f"use_karras_sigmas works with the {_and(KARRAS_SAMPLERS)} samplers, not {sampler!r}")
    spacing = s.default_spacing if spacing is None else spacing
    _check_steps(num_inference_steps, schedule.num_train_timesteps)
    _check_spacing(spacing)
    return s.make_grid(num_inference_steps, schedule, spacing=spacing, steps_offset=steps_offset,
                       use_karras_sigmas=bool(use_karras_sigmas))


# The samplers that run on any noise schedule, as k-diffusion's do: name -> how the model calls lie on it
SIGMA_SAMPLERS = {"euler": "one", "euler_a": "one", "lms": "one", "dpmpp_2m": "one", "dpmpp_2m_sde": "one",
                  "heun": "heun", "dpm2": "dpm2", "dpm2_a": "dpm2_a"}


def grid_from_sigmas(sampler: str, sigmas: torch.Tensor, schedule: Schedule, *, gammas: torch.Tensor | None = None,
                     eta_ancestral: float = 1.0) -> Grid:
    """The grid a k-diffusion sampler visits on the (n + 1,) noise levels `sigmas`: the model at t = `sigma_to_t`.

    One model call per step (Euler, LMS, DPM++), or two (Heun: at the step's end too; DPM2: at its
    geometric midpoint, toward sigma_down for DPM2 a with `eta_ancestral`). `gammas` (n,) are Karras'
    churn (`sigmas.churn_gammas`): step i then calls the model at sigma_hat = (1 + gamma_i) sigma_i,
    recorded in `Grid.sigma_hat`; the grid's sigmas stay where x sits before the churn.
    """
    if sampler not in SIGMA_SAMPLERS:
        raise ValueError(f"a schedule of noise levels works with the {_and(SIGMA_SAMPLERS)} samplers, not {sampler!r}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)  # (n + 1,)
    hat = sigmas[:-1] if gammas is None else sigmas[:-1] * (1 + gammas)  # (n,)
    kind = SIGMA_SAMPLERS[sampler]
    if kind == "one":
        return Grid(sigma_to_t(hat, schedule), sigmas, None, None if gammas is None else hat)
    n = len(hat)
    m = n if sigmas[-1] > 0 else n - 1  # steps with a second call: all but a last one that ends at sigma = 0
    step_index = torch.arange(2 * m + (n - m)).div(2, rounding_mode="floor")  # 0, 0, 1, 1, ..., (n - 1)
    if kind == "heun":  # second call at the step's end, sigma_{k+1}
        second = sigmas[1:m + 1]  # (m,)
    else:
        to = sigmas[1:m + 1] if kind == "dpm2" else ancestral_sigmas(hat[:m], sigmas[1:m + 1], eta_ancestral)[1]
        second = midpoint_sigma(hat[:m], to)  # (m,): each step's midpoint, toward sigma_down for DPM2 a
    at = torch.cat([torch.stack([sigmas[:m], second], 1).flatten(), sigmas[m:]])  # (N + 1,): where x sits, then 0
    calls = torch.cat([torch.stack([hat[:m], second], 1).flatten(), hat[m:]])  # (N,)
    return Grid(sigma_to_t(calls, schedule), at, step_index, None if gammas is None else calls)


def step_sigmas(grid: Grid) -> torch.Tensor:
    """The (n + 1,) noise levels of a sigma grid's steps: where each step begins, then the grid's end."""
    if grid.step_index is None:
        return grid.sigmas
    first = torch.ones(len(grid.step_index), dtype=torch.bool)
    first[1:] = grid.step_index[1:] != grid.step_index[:-1]
    return torch.cat([grid.sigmas[:-1][first], grid.sigmas[-1:]])


def _and(names) -> str:
    """"a", "a and b", "a, b and c"."""
    names = list(names)
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def num_steps(grid: Grid) -> int:
    """The user-facing steps a grid holds: its points, or fewer where a sampler calls the model twice a step."""
    return len(grid.timesteps) if grid.step_index is None else int(grid.step_index[-1]) + 1


def grid_index(grid: Grid, step: int) -> int:
    """The loop iteration where user-facing `step` begins; `num_steps(grid)` maps to the grid's end.

    Heun and DPM2 visit 2n - 1 points for n steps: step k begins at point 2k, where diffusers'
    img2img starts them (`t_start * order`).
    """
    if step >= num_steps(grid):
        return len(grid.timesteps)
    if grid.step_index is None:
        return step
    return int((grid.step_index == step).nonzero()[0])


def noise_to_grid_point(x0: torch.Tensor, noise: torch.Tensor, grid: Grid, index: int,
                        schedule: Schedule) -> torch.Tensor:
    """x at the grid's `index`-th timestep from clean x0: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise.

    alpha_bar comes from the grid's sigma (Karras grids) or `sigma_at` (fractional
    timesteps), alpha_bar = 1 / (1 + sigma^2), so it is exact on every sampler's grid.
    The start of image-to-image: `sample(..., x_T=this, start_step=index)`.

    Book: eq-sdedit
    Paper: Meng et al. 2022 (SDEdit), section 3
    """
    if grid.sigmas is not None:
        sigma = grid.sigmas[index]
    else:
        sigma = sigma_at(grid.timesteps[index], schedule)
    scale = 1.0 / torch.sqrt(1.0 + sigma**2)  # sqrt(alpha_bar), float64
    return (x0 + float(sigma) * noise) * float(scale)
