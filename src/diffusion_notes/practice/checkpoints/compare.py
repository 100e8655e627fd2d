"""Our pipeline against a diffusers pipeline: the same prompt, seed, sampler and steps, and the largest pixel difference.

Both start from the same latents: ours draws them from the generator first, on the CPU, and
so does diffusers' `prepare_latents`; Euler a's fresh noise then comes from the same
generator in the same order. Each sampler is set up on diffusers' side by
`schedulers.diffusers_scheduler`, as ours steps with the pipeline's defaults.
"""

from __future__ import annotations

import torch

from diffusion_notes.practice.checkpoints.schedulers import diffusers_scheduler

SAMPLERS = ("ddim", "euler_a", "dpmpp_2m")


@torch.no_grad()
def diffusers_images(d_pipe, prompt, sampler: str, schedule, *, steps: int, guidance_scale: float, seed: int,
                     negative_prompt=None, scheduler=None, **scheduler_options) -> torch.Tensor:
    """diffusers' images (N, 3, H, W) in [0, 1] with its scheduler set to our `sampler` (the pipeline's own is restored).

    `scheduler`, if given, is used as it is instead (e.g. one a user built with `from_config`).
    """
    own = d_pipe.scheduler
    d_pipe.scheduler = scheduler if scheduler is not None else diffusers_scheduler(sampler, schedule, **scheduler_options)
    d_pipe.set_progress_bar_config(disable=True)
    try:
        out = d_pipe(prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                     generator=torch.Generator().manual_seed(seed), output_type="pt")
    finally:
        d_pipe.scheduler = own
    return out.images.float().cpu()


@torch.no_grad()
def max_difference(pipe, d_pipe, prompts, samplers=SAMPLERS, *, steps: int = 10, guidance_scale: float = 4.0,
                   seed: int = 0) -> dict[str, float]:
    """Largest |ours - diffusers'| over the prompts' [0, 1] pixels, per sampler."""
    out = {}
    for sampler in samplers:
        worst = 0.0
        for k, prompt in enumerate(prompts):
            ours = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                        generator=torch.Generator().manual_seed(seed + k)).images.float().cpu()
            theirs = diffusers_images(d_pipe, prompt, sampler, pipe.schedule, steps=steps,
                                      guidance_scale=guidance_scale, seed=seed + k)
            worst = max(worst, float((ours - theirs).abs().max()))
        out[sampler] = worst
    return out


def swap_difference(pipe, d_pipe, scheduler, sampler: str, prompt: str, *, steps: int, guidance_scale: float = 4.0,
                    seed: int = 0) -> float:
    """Largest |ours - diffusers'| over [0, 1] pixels when diffusers steps with `scheduler` as given and we with `sampler`.

    This is the check for diffusers' documented swap, `Cls.from_config(d_pipe.scheduler.config)`.
    """
    ours = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                generator=torch.Generator().manual_seed(seed)).images.float().cpu()
    theirs = diffusers_images(d_pipe, prompt, sampler, pipe.schedule, steps=steps, guidance_scale=guidance_scale,
                              seed=seed, scheduler=scheduler)
    return float((ours - theirs).abs().max())
