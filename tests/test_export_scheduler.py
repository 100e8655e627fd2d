"""practice/checkpoints: the exported pipeline's scheduler config, and the idiomatic `from_config` swaps on it.

diffusers' StableDiffusionPipeline.__init__ resets a scheduler's steps_offset to 1 (and clip_sample to
False) as it builds or loads a pipeline; `SchedulerMixin.from_config` builds a class from the keys it
knows and keeps the rest. So the config must say what our samplers read, whatever class wrote it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import pytest
import torch

from diffusion_notes.practice.checkpoints import export
from diffusion_notes.practice.checkpoints.schedulers import EXPORT_CONFIG, diffusers_scheduler

PROMPT = "a small red circle on the left"
STEPS = 4


@pytest.fixture(scope="module")
def exported(pipe):
    d_pipe = export.diffusers_pipeline(pipe)
    d_pipe.set_progress_bar_config(disable=True)
    return d_pipe


def _theirs(d_pipe, scheduler) -> torch.Tensor:
    own = d_pipe.scheduler
    d_pipe.scheduler = scheduler
    try:
        return d_pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=4.0, generator=torch.Generator().manual_seed(3),
                      output_type="pt").images.float()
    finally:
        d_pipe.scheduler = own


def _ours(pipe, sampler, **options) -> torch.Tensor:
    return pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=4.0, sampler=sampler,
                generator=torch.Generator().manual_seed(3), **options).images.float()


def test_the_exported_config_holds_our_options(exported):
    """diffusers' DDIMScheduler defaults to clip_sample=True; SD's pipeline forces steps_offset=1."""
    config = exported.scheduler.config
    assert type(exported.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert {k: config[k] for k in EXPORT_CONFIG} == {"timestep_spacing": "linspace", "steps_offset": 1,
                                                     "clip_sample": False, "set_alpha_to_one": True}


@pytest.mark.parametrize("cls, sampler", [("EulerAncestralDiscreteScheduler", "euler_a"),
                                          ("DPMSolverMultistepScheduler", "dpmpp_2m"),
                                          ("EulerDiscreteScheduler", "euler"),
                                          ("LCMScheduler", "lcm")])
def test_from_config_draws_our_sampler(pipe, exported, cls, sampler):
    """`Cls.from_config(pipe.scheduler.config)` (diffusers' documented swap) draws our sampler's default picture."""
    import diffusers

    scheduler = getattr(diffusers, cls).from_config(exported.scheduler.config)
    assert float((_theirs(exported, scheduler) - _ours(pipe, sampler)).abs().max()) <= 1e-4


def test_ddim_from_config_reads_our_options(pipe, exported):
    """DDIMScheduler.from_config keeps clip_sample False and set_alpha_to_one True from the config; on DDIM's
    own grid ("leading", steps_offset 0: the two keys one config cannot hold for every class) it is our DDIM."""
    import diffusers

    scheduler = diffusers.DDIMScheduler.from_config(exported.scheduler.config)
    assert (scheduler.config.clip_sample, scheduler.config.set_alpha_to_one) == (False, True)
    ddim = diffusers.DDIMScheduler.from_config(exported.scheduler.config, timestep_spacing="leading", steps_offset=0)
    assert float((_theirs(exported, ddim) - _ours(pipe, "ddim")).abs().max()) <= 1e-4


def test_a_config_without_our_options_draws_another_ddim(pipe, exported):
    """The config the export wrote before (DPM-Solver's own): DDIM then clips x0_hat and its picture differs."""
    import diffusers

    bare = diffusers_scheduler("dpmpp_2m", pipe.schedule, steps_offset=1)
    scheduler = diffusers.DDIMScheduler.from_config(bare.config, timestep_spacing="leading", steps_offset=0)
    assert scheduler.config.clip_sample is True
    assert float((_theirs(exported, scheduler) - _ours(pipe, "ddim")).abs().max()) > 1e-3


def test_an_lcm_export_carries_lcm_scheduler(pipe):
    """`diffusers_pipeline(pipe, "lcm")` (how an LCM student is exported) samples as our "lcm" at guidance 1."""
    d_pipe = export.diffusers_pipeline(pipe, "lcm")
    d_pipe.set_progress_bar_config(disable=True)
    assert type(d_pipe.scheduler).__name__ == "LCMScheduler"
    theirs = d_pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=1.0, generator=torch.Generator().manual_seed(3),
                    output_type="pt").images.float()
    ours = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=1.0, sampler="lcm",
                generator=torch.Generator().manual_seed(3)).images.float()
    assert float((theirs - ours).abs().max()) <= 1e-4
