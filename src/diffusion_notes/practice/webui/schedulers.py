"""The web UI's schedules ("Schedule type") and the sampler options it hands to k-diffusion.

    plan = webui_plan("DPM++ 2M", 20, schedule, scheduler="Karras")    # k-diffusion's Karras sigmas
    api_list()                                                          # GET /sdapi/v1/schedulers

A schedule is the list of noise levels a k-diffusion sampler steps through (`foundations.sigmas`); the
model is called at each one's fractional timestep (`sigmas.sigma_to_t`). "Automatic" keeps each
sampler's own grid, its diffusers scheduler's (Part I), which is where the app's pictures come from by
default; every other schedule runs on the k-diffusion samplers (Euler, Euler a, LMS, Heun, DPM2, DPM2 a,
DPM++ 2M, DPM++ 2M SDE). DDIM, UniPC and DDPM step on their own timesteps and take "Automatic" only.
The options (eta, s_churn, s_tmin, s_tmax, s_noise) reach the samplers the web UI hands them to and are
ignored elsewhere, as there; s_tmax = 0 means no upper limit and eta = None each sampler's default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion_notes.foundations import sigmas as S
from diffusion_notes.foundations.grids import SIGMA_SAMPLERS
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, resolve_sampler
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.stable_diffusion.denoise import Plan, make_plan


def _range(function: Callable) -> Callable:
    """A schedule of (sigma_min, sigma_max, n) made one of (n, schedule) over the model's own sigma range."""
    return lambda n, schedule: function(*S.sigma_range(schedule), n)


@dataclass(frozen=True)
class Scheduler:
    """One entry of the web UI's "Schedule type" list, as its `sd_schedulers.Scheduler`."""

    name: str
    label: str
    sigmas: Callable | None  # (n, schedule) -> (n + 1,) float64 noise levels; None: the sampler's own
    default_rho: float = -1
    need_inner_model: bool = False  # reads the model's training sigmas, not only their range
    aliases: tuple | None = None


SCHEDULERS = (
    Scheduler("automatic", "Automatic", None),
    Scheduler("uniform", "Uniform", S.uniform_sigmas, need_inner_model=True),
    Scheduler("karras", "Karras", _range(S.karras_schedule), default_rho=7.0),
    Scheduler("exponential", "Exponential", _range(S.exponential_sigmas)),
    Scheduler("polyexponential", "Polyexponential", _range(S.polyexponential_sigmas), default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", S.sgm_uniform_sigmas, need_inner_model=True, aliases=("SGMUniform",)),
    Scheduler("kl_optimal", "KL Optimal", _range(S.kl_optimal_sigmas)),
    Scheduler("align_your_steps", "Align Your Steps", lambda n, schedule: S.align_your_steps_sigmas(n)),
    Scheduler("simple", "Simple", S.simple_sigmas, need_inner_model=True),
    Scheduler("normal", "Normal", S.uniform_sigmas, need_inner_model=True),  # t from t(sigma_max) to t(sigma_min)
    Scheduler("ddim", "DDIM", S.ddim_sigmas, need_inner_model=True),
    Scheduler("beta", "Beta", _range(S.beta_sigmas), need_inner_model=True),
)
# every name a request may use: labels, names and aliases
BY_NAME = {key: s for s in SCHEDULERS for key in (s.label, s.name, *(s.aliases or ()))}


@dataclass(frozen=True)
class KSampler:
    """What the web UI's table of k-diffusion samplers says of one of ours (its `samplers_k_diffusion`)."""

    automatic: str | None  # the schedule its "Automatic" means there (None: Uniform)
    options: tuple  # what it hands over of eta, s_churn, s_tmin, s_tmax, s_noise (`sampler_extra_params`)
    discard_next_to_last_sigma: bool = False  # one more noise level, then the last but one dropped
    uses_ensd: bool = False  # its step noise is shifted by eta_noise_seed_delta (when eta is not 0)


CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
K_SAMPLERS = {
    "euler": KSampler(None, CHURN), "euler_a": KSampler(None, ("eta",), uses_ensd=True), "lms": KSampler(None, ()),
    "heun": KSampler(None, CHURN), "dpm2": KSampler("karras", CHURN, True),
    "dpm2_a": KSampler("karras", ("eta", "s_noise"), True, uses_ensd=True), "dpmpp_2m": KSampler("karras", ()),
    "dpmpp_2m_sde": KSampler("exponential", ("eta", "s_noise")),
}
TIMESTEP_OPTIONS = {"ddim": ("eta",)}  # the samplers on timesteps: DDIM takes eta (eta_ddim, default 0)
assert set(K_SAMPLERS) == set(SIGMA_SAMPLERS)


def api_list() -> list[dict]:
    """What the web UI's GET /sdapi/v1/schedulers returns: name, label, aliases, default_rho, need_inner_model."""
    return [{"name": s.name, "label": s.label, "aliases": None if s.aliases is None else list(s.aliases),
             "default_rho": s.default_rho, "need_inner_model": s.need_inner_model} for s in SCHEDULERS]


def find(name) -> Scheduler:
    """The scheduler a label, name or alias names (None: Automatic), or a ValueError listing the labels."""
    if name is None:
        return SCHEDULERS[0]
    if not isinstance(name, str) or name not in BY_NAME:
        raise ValueError(f"scheduler must be one of {', '.join(s.label for s in SCHEDULERS)}, got {name!r}")
    return BY_NAME[name]


def offered(sampler: str) -> list[str]:
    """The labels of the schedules `sampler` (ours or a web-UI name) runs on: all for a k-diffusion sampler."""
    name, _ = resolve_sampler(sampler, None)
    return [s.label for s in SCHEDULERS] if name in K_SAMPLERS else ["Automatic"]


def automatic(sampler: str) -> str:
    """The schedule the web UI's "Automatic" means for `sampler` (its k-diffusion table's `scheduler`, else Uniform)."""
    name, _ = resolve_sampler(sampler, None)
    if name not in K_SAMPLERS:
        return "Automatic"
    return find(K_SAMPLERS[name].automatic or "uniform").label


def uses_ensd(sampler: str, eta=None) -> bool:
    """Whether the web UI shifts `sampler`'s step noise seed by ENSD: Euler a and DPM2 a, unless eta is 0.

    eta None is the sampler's default, 1 (the web UI's `is_sampler_using_eta_noise_seed_delta`).
    """
    name, _ = resolve_sampler(sampler, None)
    return name in K_SAMPLERS and K_SAMPLERS[name].uses_ensd and (1.0 if eta is None else eta) != 0


def resolve(sampler: str, scheduler) -> tuple[str, Scheduler | None]:
    """(our sampler, the schedule to run, None for the sampler's own grid) for a web-UI sampler and scheduler.

    A name that carries "Karras" ("DPM++ 2M Karras") already names its schedule: with "Automatic" it
    keeps its own Karras grid; any other scheduler but Karras is a ValueError.
    """
    found = find(scheduler)
    name, karras = resolve_sampler(sampler, None)
    if found.sigmas is None:
        return name, None
    allowed = offered(sampler)
    if found.label not in allowed:
        raise ValueError(f"sampler {sampler!r} takes the scheduler {' or '.join(allowed)}, got {scheduler!r}")
    if karras and found.name != "karras":
        raise ValueError(f"sampler {sampler!r} names the Karras schedule, got scheduler {scheduler!r}; "
                         f"give the sampler without ' Karras' to use another schedule")
    return name, found


def schedule_sigmas(sampler: str, scheduler: Scheduler, n: int, schedule: Schedule):
    """The (n + 1,) noise levels `sampler` runs on under `scheduler` (DPM2's one more, less the last but one)."""
    discard = K_SAMPLERS[sampler].discard_next_to_last_sigma
    sigmas = scheduler.sigmas(n + 1 if discard else n, schedule)  # (n + 1,) or (n + 2,)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def _number(name, value, hi=math.inf):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= hi:
        raise ValueError(f"{name} must be a finite number in [0, {hi:g}], got {value!r}")


def sampler_options(sampler: str, eta=None, s_churn=0.0, s_tmin=0.0, s_tmax=0.0, s_noise=1.0) -> dict:
    """`make_plan`'s options as the web UI hands them to `sampler`: only those it takes; bad values a ValueError.

    eta None is the sampler's default (eta_ancestral 1, eta_ddim 0); s_tmax 0 means infinity; None for
    the others is their default (0, 0, 0, 1), as the web UI's `StableDiffusionProcessing.__post_init__` fills them.
    """
    if eta is not None:
        _number("eta", eta, 1.0)
    s_churn, s_tmin = (0.0 if s_churn is None else s_churn), (0.0 if s_tmin is None else s_tmin)
    s_tmax, s_noise = (0.0 if s_tmax is None else s_tmax), (1.0 if s_noise is None else s_noise)
    for key, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_tmax", s_tmax), ("s_noise", s_noise)):
        _number(key, value)
    name, _ = resolve_sampler(sampler, None)
    takes = K_SAMPLERS[name].options if name in K_SAMPLERS else TIMESTEP_OPTIONS.get(name, ())
    given = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax or math.inf, "s_noise": s_noise}
    out = {key: value for key, value in given.items() if key in takes}
    if "eta" in takes and eta is not None:
        out["eta" if name in TIMESTEP_OPTIONS else "eta_ancestral"] = float(eta)
    return out


def webui_plan(sampler: str, n: int, schedule: Schedule, scheduler="Automatic", **options) -> Plan:
    """The plan the web UI runs: `sampler` on `scheduler`'s noise levels, with its options (`sampler_options`)."""
    name, found = resolve(sampler, scheduler)
    kwargs = sampler_options(sampler, **options)
    sigmas = None if found is None else schedule_sigmas(name, found, n, schedule)
    return make_plan(sampler, n, schedule, sigmas=sigmas, **kwargs)


def check_options(settings) -> None:
    """A ValueError if a job's scheduler or sampler options are unknown, out of range, or not its sampler's."""
    resolve(settings.sampler_name, settings.scheduler)
    sampler_options(settings.sampler_name, settings.eta, settings.s_churn, settings.s_tmin, settings.s_tmax,
                    settings.s_noise)


__all__ = ["SCHEDULERS", "K_SAMPLERS", "SAMPLER_ALIASES", "api_list", "find", "offered", "automatic", "uses_ensd",
           "resolve",
           "sampler_options", "webui_plan", "check_options"]
