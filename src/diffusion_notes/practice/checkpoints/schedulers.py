"""Our samplers as diffusers' schedulers, and a diffusers scheduler's config as our schedule.

Part I's samplers equal diffusers' schedulers (tests/test_samplers_reference.py) when both
are set alike; these two functions set them alike in each direction:

    diffusers_scheduler("euler_a", schedule)      -> EulerAncestralDiscreteScheduler(...)
    schedule_from_config(pipe.scheduler.config)   -> our Schedule (betas of the same kind and range)

`export_scheduler` is the scheduler an exported folder carries: its config holds every option
our samplers read, so that `AnyScheduler.from_config(pipe.scheduler.config)` steps as ours does.
"""

from __future__ import annotations

import torch

from diffusion_notes.foundations.samplers import SAMPLERS, resolve_sampler
from diffusion_notes.foundations.schedules import Schedule, make_schedule

# our schedule kinds <-> diffusers' beta_schedule names
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def beta_config(schedule: Schedule) -> dict:
    """diffusers' beta_schedule, beta_start, beta_end and num_train_timesteps for our schedule."""
    config = {"beta_schedule": BETA_SCHEDULES[schedule.kind], "num_train_timesteps": schedule.num_train_timesteps}
    if schedule.kind != "cosine":
        config["beta_start"] = float(f"{float(schedule.betas[0]):.12g}")
        config["beta_end"] = float(f"{float(schedule.betas[-1]):.12g}")
    return config


# Our samplers that no diffusers scheduler equals, and why: the web UI's LCM runs on k-diffusion's kind of grid.
NO_DIFFUSERS_EQUAL = {"lcm_webui": "the web UI's LCM visits times spaced evenly from 999 to 19 at interpolated "
                                   "noise levels; diffusers' LCMScheduler (our 'lcm') takes n of 999, 979, ..., 19"}


def diffusers_scheduler(sampler: str, schedule: Schedule, use_karras_sigmas: bool | None = None, **options):
    """The diffusers scheduler that steps as our `sampler` does with our pipeline's defaults.

    Defaults follow ours: each sampler's `diffusers_config` (e.g. no clipping of x0_hat and
    set_alpha_to_one for DDIM), steps_offset 0, each scheduler's own timestep spacing.
    `options` (e.g. timestep_spacing="trailing") go to the scheduler, over those defaults. "lcm" is
    `LCMScheduler` (its timestep_spacing and steps_offset are read by nobody); the web UI's "LCM"
    (`lcm_webui`) has no equal there (`NO_DIFFUSERS_EQUAL`): a ValueError.
    """
    import diffusers

    name, karras = resolve_sampler(sampler, use_karras_sigmas)
    if name in NO_DIFFUSERS_EQUAL:
        raise ValueError(f"sampler {sampler!r} ({name}) has no diffusers scheduler that steps as it does: "
                         f"{NO_DIFFUSERS_EQUAL[name]}")
    cls = getattr(diffusers, SAMPLERS[name].diffusers_class)
    config = {**beta_config(schedule), "prediction_type": "epsilon", **SAMPLERS[name].diffusers_config, **options}
    if karras:
        config["use_karras_sigmas"] = True
    return cls(**config)


# What an exported folder's scheduler config says, whatever class reads it: the exported sampler's own
# spacing ("linspace", as our DPM++ 2M and Euler samplers have it), steps_offset 1 (diffusers'
# StableDiffusionPipeline resets any other value to 1 as it loads; "linspace" does not read it), no
# clipping of x0_hat and DDIM's last step to alpha_bar = 1, as our DDIM takes them.
EXPORT_CONFIG = {"timestep_spacing": "linspace", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": True}


def export_scheduler(sampler: str, schedule: Schedule):
    """`diffusers_scheduler(sampler, schedule)` with `EXPORT_CONFIG` in its config, for an exported folder.

    A scheduler class keeps the keys it has no use for in its config (DPM-Solver's `clip_sample`),
    so `EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)` steps as our Euler a and
    `DDIMScheduler.from_config(...)` reads our clip_sample and set_alpha_to_one. One spacing serves
    every class, and DDIM's is "leading" with steps_offset 0, so our DDIM is
    `DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading", steps_offset=0)`.
    """
    scheduler = diffusers_scheduler(sampler, schedule, timestep_spacing=EXPORT_CONFIG["timestep_spacing"],
                                    steps_offset=EXPORT_CONFIG["steps_offset"])
    scheduler.register_to_config(**{k: v for k, v in EXPORT_CONFIG.items() if k not in scheduler.config})
    return scheduler


def schedule_from_config(config) -> Schedule:
    """Our Schedule for a diffusers scheduler config (beta_schedule, beta_start, beta_end, num_train_timesteps)."""
    kinds = {v: k for k, v in BETA_SCHEDULES.items()}
    beta_schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None or beta_schedule not in kinds:
        raise ValueError(f"the scheduler's beta_schedule {beta_schedule!r} (or trained_betas) has no schedule here; "
                         f"known: {', '.join(kinds)}")
    T = int(config.get("num_train_timesteps", 1000))
    if kinds[beta_schedule] == "cosine":
        return make_schedule("cosine", T)
    return make_schedule(kinds[beta_schedule], T, config.get("beta_start", 0.0001), config.get("beta_end", 0.02))


def prediction_type(config) -> str:
    """What the UNet predicts: "epsilon" (SD 1.x), "v_prediction" (SD 2.x at 768 px) or "sample"."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unknown prediction_type {kind!r}")
    return kind


def torch_dtype_for(device: torch.device) -> torch.dtype:
    """float16 on a GPU (CUDA or MPS), float32 on the CPU, where half precision is slow or unsupported."""
    return torch.float16 if torch.device(device).type in ("cuda", "mps") else torch.float32
