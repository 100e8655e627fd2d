"""Text to image steered by a condition image: the latent pipeline with a ControlNet, as diffusers calls it.

    pipe = ControlNetPipeline(unet, vae, clip, scale_factor, controlnet)
    images = pipe("a red star", image=outline,            # (1, 3, 32, 32) in [0, 1], or a 32x32 PIL image
                  controlnet_conditioning_scale=1.0,        # s_c: how loudly the residuals speak
                  control_guidance_start=0.0, control_guidance_end=1.0,   # the fraction of the steps it acts on
                  guess_mode=False, generator=torch.Generator().manual_seed(0)).images

mirrors diffusers' StableDiffusionControlNetPipeline. At step i of n the residuals are
multiplied by s_c, or by 0 when i / n < start or (i + 1) / n > end (diffusers' `controlnet_keep`).
In guess mode the ControlNet acts on the conditional half of the guided batch only, and its
residuals are weighted from 0.1 (shallow) to 1 (middle), so it can draw the condition with an empty prompt.
`init_image=` with `strength=` runs image-to-image, the window then counted over the steps run.
"""

from __future__ import annotations

import torch

from diffusion_notes.data.images import prompt_list
from diffusion_notes.foundations.grids import grid_index
from diffusion_notes.foundations.guidance import CFGDenoiser
from diffusion_notes.practice.controlnet.units import ControlledUNet, ControlUnit, check_control, condition_tensor
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE
from diffusion_notes.stable_diffusion.pipeline import DEFAULT_SAMPLER, LatentDiffusionPipeline, PipelineOutput


class ControlNetPipeline(LatentDiffusionPipeline):
    """LatentDiffusionPipeline plus a ControlNet and a condition image; see the module docstring."""

    def __init__(self, unet, vae, clip, scale_factor: float, controlnet, schedule=None):
        super().__init__(unet, vae, clip, scale_factor, schedule)
        self.controlnet = controlnet.eval()

    @torch.no_grad()
    def __call__(self, prompt, image=None, negative_prompt=None, num_inference_steps: int = 25,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, sampler: str = DEFAULT_SAMPLER,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1,
                 output_type: str = "pt", controlnet_conditioning_scale: float = 1.0,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0, guess_mode: bool = False,
                 init_image=None, strength: float = 0.8, callback=None, **options) -> PipelineOutput:
        """Generate images for `prompt` steered by the condition `image` (None: the plain pipeline)."""
        if image is not None:
            options.update(control=self._unit(image, prompt, num_images_per_prompt, controlnet_conditioning_scale,
                                              control_guidance_start, control_guidance_end), guess_mode=guess_mode)
        return super().__call__(prompt, negative_prompt, num_inference_steps, guidance_scale, sampler, generator,
                                num_images_per_prompt, callback, output_type, init_image, strength, **options)

    def _unit(self, image, prompt, k: int, scale, start, end) -> ControlUnit:
        """The condition image (one, or one per prompt, each repeated for its k images) as a checked unit."""
        scale, start, end = check_control(scale, start, end)
        n_prompts = len(prompt_list(prompt, "prompt"))
        control = self.controlnet.check_condition(condition_tensor(image, self.controlnet.config.condition_size))
        if len(control) not in (1, n_prompts):
            raise ValueError(f"give one condition image, or one per prompt; got {len(control)} for {n_prompts} prompts")
        control = control.to(self.device).expand(n_prompts, -1, -1, -1).repeat_interleave(k, 0)  # (N, 3, H, W)
        return ControlUnit(control, "controlnet", scale, start, end, net=self.controlnet)

    def _denoiser(self, cond, uncond, guidance_scale, grid, first, control=None, guess_mode=False):
        """The UNet steered by the unit over the steps run; in guess mode the negative rows go unsteered."""
        if control is None:
            return super()._denoiser(cond, uncond, guidance_scale, grid, first)
        rows = len(cond)
        cond = {"context": cond, "weight": torch.ones(rows, device=self.device)}
        if uncond is not None:
            uncond = {"context": uncond, "weight": torch.full((rows,), 0.0 if guess_mode else 1.0, device=self.device)}
        unet = ControlledUNet(self.unet, [control], grid.timesteps.tolist()[grid_index(grid, first):], guess_mode)
        return CFGDenoiser(unet, cond, uncond, guidance_scale)
