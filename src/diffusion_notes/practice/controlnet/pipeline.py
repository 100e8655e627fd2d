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

import math

import numpy as np
import torch

from diffusion_notes.data.images import prompt_list, to_pil
from diffusion_notes.device import randn
from diffusion_notes.foundations.grids import make_grid, noise_to_grid_point
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, SAMPLERS, resolve_sampler, sample
from diffusion_notes.practice.controlnet.model import controlled_eps
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE
from diffusion_notes.stable_diffusion.pipeline import DEFAULT_SAMPLER, LatentDiffusionPipeline, PipelineOutput


def check_control(scale, start, end) -> tuple[float, float, float]:
    """Raise a ValueError unless scale >= 0 and 0 <= start < end <= 1; return them as floats."""
    for name, value in (("controlnet_conditioning_scale", scale), ("control_guidance_start", start),
                        ("control_guidance_end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if scale < 0:
        raise ValueError(f"controlnet_conditioning_scale must be >= 0 (0 = no control, 1 = as trained), got {scale}")
    if not 0 <= start < end <= 1:
        raise ValueError(f"control_guidance_start and control_guidance_end must satisfy 0 <= start < end <= 1 "
                         f"(fractions of the steps), got start={start}, end={end}")
    return float(scale), float(start), float(end)


def control_keep(n: int, start: float, end: float) -> list[float]:
    r"""1.0 at the steps i of n where the ControlNet acts, else 0.0: diffusers' controlnet_keep.

    $$k_i = 1 - [\,i / n < \text{start} \ \text{or}\ (i + 1) / n > \text{end}\,]$$

    Book: eq-control-window
    Paper: Zhang et al. 2023, section 4 (the conditioning scale); diffusers' StableDiffusionControlNetPipeline
    """
    return [1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)]


def condition_tensor(image, size: int = 32) -> torch.Tensor:
    """A condition image (PIL, or a (3, H, W) / (B, 3, H, W) float tensor in [0, 1]) -> (B, 3, size, size) in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        if tuple(image.size) != (size, size):
            raise ValueError(f"the condition image must be {size}x{size} pixels, got {image.size[0]}x{image.size[1]}")
        image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise ValueError("the condition image must be a PIL image or a float tensor (3, H, W) or (B, 3, H, W) in [0, 1]")
    return image[None] if image.ndim == 3 else image


class ControlledModel:
    """eps_model(x, t, cond) for the samplers: cond = {"context", "condition", "weight" (B,)}; weight 0 rows are uncontrolled."""

    def __init__(self, unet, controlnet, timesteps: list, keep: list[float], scale: float, guess_mode: bool):
        self.unet, self.controlnet, self.scale, self.guess_mode = unet, controlnet, scale, guess_mode
        self.keep = {float(t): k for t, k in zip(timesteps, keep)}

    def __call__(self, x, t, cond):
        s = self.scale * self.keep[float(t.reshape(-1)[0])]
        if s == 0:
            return self.unet(x, t, cond["context"])
        return controlled_eps(self.unet, self.controlnet, x, t, cond["context"], cond["condition"],
                              scale=cond["weight"] * s, guess_mode=self.guess_mode)


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
                 init_image=None, strength: float = 0.8, callback=None, **sampler_options) -> PipelineOutput:
        """Generate images for `prompt` steered by the condition `image` (None: the plain pipeline)."""
        if image is None:
            return super().__call__(prompt, negative_prompt, num_inference_steps, guidance_scale, sampler, generator,
                                    num_images_per_prompt, callback, output_type, init_image, strength,
                                    **sampler_options)
        self._check(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, strength)
        if sampler not in SAMPLERS and sampler not in SAMPLER_ALIASES:
            raise ValueError(f"sampler must be one of {', '.join([*SAMPLERS, *SAMPLER_ALIASES])}, got {sampler!r}")
        scale, start, end = check_control(controlnet_conditioning_scale, control_guidance_start, control_guidance_end)
        prompts = prompt_list(prompt, "prompt")
        negatives = [""] * len(prompts) if negative_prompt is None else prompt_list(negative_prompt, "negative_prompt")
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts")
        k, n_prompts = num_images_per_prompt, len(prompts)
        control = self.controlnet.check_condition(condition_tensor(image, self.controlnet.config.condition_size))
        if len(control) not in (1, n_prompts):
            raise ValueError(f"give one condition image, or one per prompt; got {len(control)} for {n_prompts} prompts")
        control = control.to(self.device).expand(n_prompts, -1, -1, -1).repeat_interleave(k, 0)  # (N, 3, H, W)
        context = self.encode_prompt(prompts).repeat_interleave(k, 0)  # (N, 77, D_c)
        N, guided = len(context), guidance_scale != 1
        cond = {"context": context, "condition": control, "weight": torch.ones(N, device=self.device)}
        uncond = None
        if guided:
            uncond = {"context": self.encode_prompt(negatives).repeat_interleave(k, 0), "condition": control,
                      "weight": torch.full((N,), 0.0 if guess_mode else 1.0, device=self.device)}
        c = self.unet.config
        shape = (N, c.in_channels, c.sample_size, c.sample_size)
        name, karras = resolve_sampler(sampler, sampler_options.get("use_karras_sigmas"))
        grid = make_grid(name, num_inference_steps, self.schedule, sampler_options.get("spacing"),
                         sampler_options.get("steps_offset", 0), karras)
        first = 0 if init_image is None else num_inference_steps - min(int(num_inference_steps * strength),
                                                                          num_inference_steps)
        run = grid.timesteps.tolist()[first:]
        model = ControlledModel(self.unet, self.controlnet, run, control_keep(len(run), start, end), scale, guess_mode)
        options = dict(sampler=sampler, num_inference_steps=num_inference_steps, schedule=self.schedule,
                       generator=generator, callback=callback, device=self.device, cond=cond, uncond=uncond,
                       guidance_scale=float(guidance_scale), **sampler_options)
        if init_image is None:
            z = sample(model, shape, **options)
        else:
            z0 = self.encode_image(init_image)  # (b, 4, 8, 8)
            if len(z0) not in (1, n_prompts):
                raise ValueError(f"give one init image, or one per prompt; got {len(z0)} for {n_prompts} prompts")
            z0 = z0.expand(n_prompts, -1, -1, -1).repeat_interleave(k, 0)  # (N, 4, 8, 8)
            if first == num_inference_steps:
                z = z0
            else:
                noise = randn(shape, generator, device=self.device)  # (N, 4, 8, 8)
                x_start = noise_to_grid_point(z0, noise, grid, first, self.schedule).float()
                z = sample(model, shape, x_T=x_start, start_step=first, **options)
        if output_type == "latent":
            return PipelineOutput(z, z)
        images = self.decode_latents(z).cpu()  # (N, 3, 32, 32)
        return PipelineOutput(to_pil(images) if output_type == "pil" else images, z)

