"""Text to image with the three parts: CLIP's text encoder, the latent UNet, the autoencoder's decoder.

`LatentDiffusionPipeline` mirrors diffusers' StableDiffusionPipeline call:

    pipe = pretrained.load("stable_diffusion")      # or LatentDiffusionPipeline(unet, vae, clip, scale_factor)
    images = pipe("a small red circle on the left", num_inference_steps=25, guidance_scale=4,
                  generator=torch.Generator().manual_seed(0)).images   # (1, 3, 32, 32) in [0, 1]

and, given `image=` and `strength=`, runs image-to-image (SDEdit; diffusers'
StableDiffusionImg2ImgPipeline): the input is encoded, noised to the grid point
that leaves `strength` of the steps, and denoised from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusion_notes.data.images import check_image_input, prompt_list, to_pil
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.device import randn
from diffusion_notes.foundations.guidance import CFGDenoiser, check_guidance_scale
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, SAMPLERS
from diffusion_notes.stable_diffusion.denoise import denoise, make_plan, strength_start
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE, ldm_schedule, null_context

OUTPUT_TYPES = ("pt", "pil", "latent")
DEFAULT_SAMPLER = "dpmpp_2m"
# diffusers' scheduler options a call may pass (`denoise.make_plan`), besides clip_x0 (the loop's)
PLAN_OPTIONS = ("spacing", "steps_offset", "use_karras_sigmas", "eta", "set_alpha_to_one")


@dataclass
class PipelineOutput:
    """What a pipeline call returns: `.images` as asked by output_type, and the final latents (N, 4, 8, 8)."""

    images: object
    latents: torch.Tensor


class LatentDiffusionPipeline:
    """Caption -> CLIP token states -> UNet denoising of an 8x8x4 latent -> decoder -> 32x32 image."""

    def __init__(self, unet, vae, clip, scale_factor: float, schedule=None):
        self.unet, self.vae, self.clip = unet.eval(), vae.eval(), clip.eval()
        self.scale_factor = float(scale_factor)
        self.schedule = schedule or ldm_schedule()
        self._null = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """tau(y): token states (B, 77, D_c). "" gives the unconditional states; over 77 tokens warns and cuts."""
        if self._null is None:
            self._null = null_context(self.clip)
        states = self.clip.encode_text(tokenize(prompts, allow_empty=True)).token_states
        empty = torch.tensor([p.strip() == "" for p in prompts], device=states.device)
        return torch.where(empty[:, None, None], self._null.to(states.device), states)  # (B, 77, D_c)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """D(z / scale_factor): latents (N, 4, 8, 8) -> images (N, 3, 32, 32) in [0, 1]."""
        return ((self.vae.decode(z / self.scale_factor) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_image(self, image, generator=None) -> torch.Tensor:
        """Images (PIL or [0, 1] tensors) -> scaled latents (B, 4, 8, 8), the posterior's mean."""
        x = check_image_input(image).to(self.device)
        return self.vae.encode(x).mean * self.scale_factor

    def _check(self, num_inference_steps, guidance_scale, num_images_per_prompt, output_type, strength):
        T = self.schedule.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps must be an int between 1 and {T}, got {num_inference_steps!r}")
        check_guidance_scale(guidance_scale)
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1 \
                or math.isnan(strength):
            raise ValueError(f"strength must be a number in [0, 1] (0 = keep the image, 1 = ignore it), got {strength!r}")

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, num_inference_steps: int = 25,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, sampler: str = DEFAULT_SAMPLER,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1, callback=None,
                 output_type: str = "pt", image=None, strength: float = 0.8, progress: bool = False,
                 **options) -> PipelineOutput:
        """Generate images for `prompt` (a string or a list); see the module docstring.

        negative_prompt replaces the empty caption in guidance. `sampler` is any
        sampler of Part I (or its web-UI name); diffusers' scheduler options (eta,
        use_karras_sigmas, spacing, steps_offset, set_alpha_to_one) and clip_x0 are taken as
        `samplers.sample` takes them; any other keyword goes to `_denoiser`. `callback(i, t, z_t, z0_hat)`
        sees each step's latents. With `image`, each prompt gets that image (or
        one image per prompt) as its start and `strength` says how much of the
        denoising to redo.
        """
        self._check(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, strength)
        if sampler not in SAMPLERS and sampler not in SAMPLER_ALIASES:
            known = ", ".join([*SAMPLERS, *SAMPLER_ALIASES])
            raise ValueError(f"sampler must be one of {known}, got {sampler!r}")
        prompts = prompt_list(prompt, "prompt")
        negatives = [""] * len(prompts) if negative_prompt is None else prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1 and len(prompts) > 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")
        k, n = num_images_per_prompt, num_inference_steps
        cond = self.encode_prompt(prompts).repeat_interleave(k, 0)  # (N, 77, D_c), N = B k
        uncond = self.encode_prompt(negatives).repeat_interleave(k, 0) if guidance_scale != 1 else None
        z0 = None if image is None else self._init_latents(image, len(prompts), k)  # (N, 4, 8, 8)
        start = 0 if image is None else strength_start(n, strength)
        plan = make_plan(sampler, n, self.schedule, **{key: options.pop(key) for key in PLAN_OPTIONS if key in options})
        clip_x0 = options.pop("clip_x0", None)
        if start == n:  # strength 0: nothing to redo
            z = z0
        else:
            c = self.unet.config
            first = randn((len(cond), c.in_channels, c.sample_size, c.sample_size), generator, device=self.device)
            model = self._denoiser(cond, uncond, float(guidance_scale), plan.grid, start, **options)
            z = denoise(model, plan, first, z0=z0, start_step=start, generator=generator, callback=callback,
                        clip_x0=clip_x0, progress=progress)
        if output_type == "latent":
            return PipelineOutput(z, z)
        images = self.decode_latents(z).cpu()  # (N, 3, 32, 32)
        return PipelineOutput(to_pil(images) if output_type == "pil" else images, z)

    def _denoiser(self, cond, uncond, guidance_scale: float, grid, first: int):
        """The model(x, t) -> eps the loop calls: the UNet guided by cond (N, 77, D_c) against uncond.

        The hook a pipeline overrides to steer the UNet (ControlNet); `grid` is the run's grid and
        `first` the step it starts at.
        """
        return CFGDenoiser(self.unet, cond, uncond, guidance_scale)

    def _init_latents(self, image, n_prompts: int, k: int) -> torch.Tensor:
        """The init image(s), one or one per prompt, encoded and repeated for each prompt's k images: (N, 4, 8, 8)."""
        z0 = self.encode_image(image)  # (b, 4, 8, 8)
        if len(z0) not in (1, n_prompts):
            raise ValueError(f"give one init image, or one per prompt; got {len(z0)} images for {n_prompts} prompts")
        return z0.expand(n_prompts, -1, -1, -1).repeat_interleave(k, 0)  # (N, 4, 8, 8)
