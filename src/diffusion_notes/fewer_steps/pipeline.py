"""Text to image with a flow-matching UNet: the latent pipeline with Euler on the flow ODE in place of a sampler.

`FlowPipeline` takes the same call as `LatentDiffusionPipeline` (prompt, negative_prompt,
num_inference_steps, guidance_scale, generator, num_images_per_prompt, output_type) and draws the
same starting noise for the same seed, so a flow model and a noise-prediction model can be
compared picture by picture. `shift` is SD3's timestep shift (1: none); `grid` is diffusers'
("diffusers", whose last step only goes from 1/T to 0) or "uniform" (`flow.uniform_flow_sigmas`).
"""

from __future__ import annotations

import torch

from diffusion_notes.data.images import prompt_list, to_pil
from diffusion_notes.device import randn
from diffusion_notes.fewer_steps.flow import flow_sample
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline, PipelineOutput


class FlowPipeline(LatentDiffusionPipeline):
    """Caption -> CLIP token states -> Euler on the UNet's velocity field -> decoder -> 32x32 image."""

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, num_inference_steps: int = 25,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, generator: torch.Generator | None = None,
                 num_images_per_prompt: int = 1, output_type: str = "pt", shift: float = 1.0,
                 grid: str = "diffusers", callback=None, **unused) -> PipelineOutput:
        self._check(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, 1.0)
        if unused:
            raise ValueError(f"the flow pipeline samples with Euler only; it takes no {', '.join(sorted(unused))}")
        prompts = prompt_list(prompt, "prompt")
        negatives = [""] * len(prompts) if negative_prompt is None else prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1 and len(prompts) > 1:
            negatives = negatives * len(prompts)
        k = num_images_per_prompt
        cond = self.encode_prompt(prompts).repeat_interleave(k, 0)  # (N, 77, D_c)
        uncond = self.encode_prompt(negatives).repeat_interleave(k, 0) if guidance_scale != 1 else None
        c = self.unet.config
        x1 = randn((len(cond), c.in_channels, c.sample_size, c.sample_size), generator, device=self.device)
        z = flow_sample(self.unet, x1, num_inference_steps, cond=cond, uncond=uncond,
                        guidance_scale=float(guidance_scale), shift=shift, grid=grid, callback=callback)
        if output_type == "latent":
            return PipelineOutput(z, z)
        images = self.decode_latents(z).cpu()
        return PipelineOutput(to_pil(images) if output_type == "pil" else images, z)
