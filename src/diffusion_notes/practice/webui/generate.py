"""txt2img, img2img and inpainting, as the web UI runs them, on a `LatentDiffusionPipeline`'s parts.

    settings = Settings(prompt="a small red circle on the left", steps=20, cfg_scale=4, seed=1)
    result = generate(pipe, settings, model=("ldm_unet", "0123456789"))   # result.images: PIL images

One job is `n_iter` batches of `batch_size` images; image i of the job has seed + i (and variation
seed subseed + i; while a variation strength is set, every image keeps the seed). Each batch: every image's conditioning (prompt editing, AND, emphasis:
`conditioning`), its noise (`seeds.ImageRNG`), the sampler's grid and prepared step (Part I), the
loop, the decoder. img2img starts part-way, where the web UI's denoising strength says; inpainting
(`inpaint`) also blends the denoised estimate with the input's latent outside the mask at every
model call and pastes the input's pixels back at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from PIL import Image

from diffusion_notes.data.images import to_pil
from diffusion_notes.foundations.grids import RegistryView, grid_index
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, SAMPLERS
from diffusion_notes.practice.controlnet.units import ControlledUNet, ControlUnit
from diffusion_notes.practice.finetune.lora_files import applied
from diffusion_notes.practice.webui import infotext, inpaint
from diffusion_notes.practice.webui.conditioning import (
    Conditioning,
    PromptEncoder,
    WebUIDenoiser,
    total_steps,
    webui_counter,
)
from diffusion_notes.practice.webui.extra_networks import parse_extra_networks
from diffusion_notes.practice.webui.inpaint import latent_mask, pixel_mask  # noqa: F401  (the chapter's)
from diffusion_notes.practice.webui.prompts import parse_prompt_attention
from diffusion_notes.practice.webui.schedulers import check_options, webui_plan
from diffusion_notes.practice.webui.seeds import ImageRNG, job_seeds, resolve_seed
from diffusion_notes.stable_diffusion.denoise import denoise
from diffusion_notes.stable_diffusion.denoise import webui_start as start_step  # the web UI's img2img start

SIZE = 32  # the only size our models draw
LIMITS = {"steps": (1, 150), "cfg_scale": (0.0, 30.0), "batch_size": (1, 8), "n_iter": (1, 100),
          "mask_blur": (0, 16), "inpaint_full_res_padding": (0, 32)}
DEFAULT_SAMPLER = "DPM++ 2M"
# our sampler names as the web UI's, each sampler's first: "euler_a" -> "Euler a", "dpmpp_2m" -> "DPM++ 2M".
# The web UI's list of samplers is SAMPLER_ALIASES, every registered sampler's web-UI names (`samplers.base`).
WEBUI_NAME = RegistryView(lambda sampler: next(iter(sampler.webui_names)), keep=lambda sampler: sampler.webui_names)


@dataclass
class Settings:
    """One job's settings, named as the web UI's API names them."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = DEFAULT_SAMPLER
    cfg_scale: float = 4.0  # the web UI's default is 7; our small model's is 4 (Chapter 13)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    batch_size: int = 1
    n_iter: int = 1
    width: int = SIZE
    height: int = SIZE
    # img2img and inpainting
    init_image: Image.Image | None = None
    denoising_strength: float = 0.75
    mask: Image.Image | None = None  # white = redraw
    mask_blur: int = 0  # the web UI's default is 4 pixels of 512; ours are 32
    inpainting_mask_invert: bool = False
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = 4
    controlnet: list[ControlUnit] = field(default_factory=list)  # ControlNet units (Chapter 17)
    # the sampler's options, as the web UI hands them to k-diffusion
    scheduler: str = "Automatic"  # the web UI's "Schedule type": Automatic, Uniform, Karras, Exponential, ...
    eta: float | None = None  # None: the sampler's default (the web UI's eta_ddim 0, eta_ancestral 1)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 means no upper limit, as in the web UI
    s_noise: float = 1.0
    # the web UI's settings that change a picture (its options, or override_settings for one job)
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    eta_noise_seed_delta: int = 0  # ENSD
    randn_source: str = "GPU"  # "Random number generator source": GPU (the device's), CPU or NV
    old_prompt_editing: bool = False  # "Use old prompt editing timelines"
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # img2img and inpainting, as the web UI's processing.py
    init_images: list = field(default_factory=list)  # cycled over the batch; init_image is the first
    resize_mode: int = 0  # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale
    inpainting_fill: int = 1  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    mask_blur_x: int | None = None  # None: mask_blur
    mask_blur_y: int | None = None
    mask_round: bool = True
    # the infotext's other "Key: value" pairs, as the web UI's p.extra_generation_params ("Lora hashes", "ControlNet 0")
    extra_generation_params: dict = field(default_factory=dict)

    def public(self) -> dict:
        """The settings as JSON (without the images; ControlNet units without their images)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("init_image", "init_images", "mask", "controlnet")}
        return {**out, "controlnet": [unit.public() for unit in self.controlnet]} if self.controlnet else out


@dataclass
class Result:
    """One job's images with their seeds and infotexts, and where they came from."""

    images: list
    seeds: list[int]
    subseeds: list[int]
    infotexts: list[str]
    settings: Settings
    warnings: list[str] = field(default_factory=list)
    model_name: str = ""  # the checkpoint that drew them, as the infotext's "Model"
    model_hash: str = ""  # its short hash, as the infotext's "Model hash"
    paths: list = field(default_factory=list)  # the PNG files the web UI wrote, if it keeps an outputs folder


def _number(name, value, whole: bool):
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not whole and not math.isfinite(value)):
        raise ValueError(f"{name} must be {'an int' if whole else 'a number'}, got {value!r}")
    lo, hi = LIMITS[name]
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")


def sampler_name(name) -> str:
    """The web-UI name of a sampler given by its web-UI name or ours ("euler_a" -> "Euler a")."""
    if name in SAMPLER_ALIASES:
        return name
    if name in WEBUI_NAME:
        return WEBUI_NAME[name]
    raise ValueError(f"unknown sampler {name!r}; the samplers are {', '.join(SAMPLER_ALIASES)}")


def check(settings: Settings) -> Settings:
    """The settings with the sampler's web-UI name, or a ValueError that says what is wrong."""
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(settings, name), str):
            raise ValueError(f"{name} must be a string, got {getattr(settings, name)!r}")
        for part in getattr(settings, name).split("AND"):
            parse_prompt_attention(part)  # malformed emphasis raises here
    for name in ("steps", "batch_size", "n_iter", "mask_blur", "inpaint_full_res_padding"):
        _number(name, getattr(settings, name), whole=True)
    _number("cfg_scale", settings.cfg_scale, whole=False)
    for name in ("subseed_strength", "denoising_strength"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if (settings.width, settings.height) != (SIZE, SIZE):
        raise ValueError(f"this model draws {SIZE}x{SIZE} images only, got width={settings.width!r}, "
                         f"height={settings.height!r}; resize the result yourself if you need it larger")
    resolve_seed(settings.seed), resolve_seed(settings.subseed)
    settings.sampler_name = sampler_name(settings.sampler_name)
    if isinstance(settings.clip_skip, bool) or not isinstance(settings.clip_skip, int) or settings.clip_skip < 1:
        raise ValueError(f"clip_skip must be an int >= 1 (1 = the text encoder's last layer), got {settings.clip_skip!r}")
    if not isinstance(settings.old_prompt_editing, bool):
        raise ValueError(f"old_prompt_editing must be true or false, got {settings.old_prompt_editing!r}")
    check_options(settings)  # the scheduler, eta, s_churn, s_tmin, s_tmax and s_noise
    if settings.mask is not None and settings.init_image is None:
        raise ValueError("a mask needs an init image (inpainting redraws part of an image)")
    inpaint.check(settings)
    for unit in settings.controlnet:
        unit.check()
    return settings


def _as_rgb(image, what: str) -> Image.Image:
    if not hasattr(image, "convert"):
        raise ValueError(f"{what} must be an image")
    return image.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC) if image.size != (SIZE, SIZE) \
        else image.convert("RGB")


def job_plan(pipe, settings: Settings):
    """The sampler's plan for the job: its grid under the web UI's schedule type, with its options."""
    return webui_plan(settings.sampler_name, settings.steps, pipe.schedule, settings.scheduler, eta=settings.eta,
                      s_churn=settings.s_churn, s_tmin=settings.s_tmin, s_tmax=settings.s_tmax,
                      s_noise=settings.s_noise)


@torch.no_grad()
def run_batch(pipe, settings: Settings, seeds: list[int], subseeds: list[int], encoder: PromptEncoder,
              init: torch.Tensor | None = None, mask: inpaint.Inpainting | None = None, callback=None,
              fill_seeds: list[int] | None = None) -> torch.Tensor:
    """One batch: latents (B, 4, 8, 8) -> decoded images (B, 3, 32, 32) in [0, 1]."""
    B, n, c = len(seeds), settings.steps, pipe.unet.config
    plan = job_plan(pipe, settings)
    rng = ImageRNG((c.in_channels, c.sample_size, c.sample_size), seeds, subseeds, settings.subseed_strength,
                   eta_noise_seed_delta=settings.eta_noise_seed_delta, randn_source=settings.randn_source,
                   device=pipe.device)
    noise = rng.next()  # (B, 4, 8, 8): the first draw is the starting noise; later ones are the steps'
    z0 = None if init is None else pipe.encode_image(init).expand(B, -1, -1, -1)  # (B, 4, 8, 8)
    start = 0 if init is None else start_step(n, settings.denoising_strength)
    total, old = total_steps(plan.grid, n), settings.old_prompt_editing  # the web UI's prompt-editing count
    conds = [Conditioning(encoder, settings.prompt, total, old=old) for _ in range(B)]
    unconds = [Conditioning(encoder, settings.negative_prompt, total, split=False, old=old) for _ in range(B)]
    unet = pipe.unet
    if settings.controlnet:  # Chapter 17: the units' residuals on every row the denoiser sends
        unet = ControlledUNet(unet, settings.controlnet, plan.grid.timesteps.tolist()[grid_index(plan.grid, start):],
                              images=B)
    model = WebUIDenoiser(unet, conds, unconds, settings.cfg_scale, encoder(""),
                          counter=webui_counter(plan.grid, grid_index(plan.grid, start)))
    if mask is not None:  # inpainting: mask is the job's `inpaint.Inpainting`, fill_seeds its first batch's seeds
        z = inpaint.denoise_masked(model, plan, noise, z0, mask, settings, fill_seeds or seeds, start_step=start,
                                   noise=rng.next, callback=callback)
    else:
        z = denoise(model, plan, noise, z0=z0, start_step=start, noise=rng.next, callback=callback)
    return pipe.decode_latents(z).cpu()  # (B, 3, 32, 32)


def generate(pipe, settings: Settings, model: tuple[str, str] = ("", ""), callback=None, loras=None,
             controlnets=None) -> Result:
    """Run a job: `model` is (name, hash) for the infotext. Returns PIL images, seeds and infotexts.

    `<lora:name:weight>` tags in the prompt are looked up in `loras` (an extra_networks.LoRALibrary),
    merged into the UNet for this job and removed from the text the encoder sees. ControlNet units
    name their model in `controlnets` ({name: ControlNet}).
    """
    settings = check(settings)
    if settings.controlnet:
        known = controlnets or {}
        settings = replace(settings, controlnet=[replace(u.check(known), net=known[u.model]) for u in settings.controlnet])
    prompt, tags = parse_extra_networks(settings.prompt)
    if tags and loras is None:
        raise ValueError(f"the prompt names {len(tags)} extra network(s) ({tags[0][0]}:{tags[0][1]}) "
                         "but no LoRAs are loaded")
    networks = loras.networks(tags) if tags else []
    if networks:
        settings = replace(settings, extra_generation_params={**settings.extra_generation_params,
                                                              "Lora hashes": loras.hashes(tags)})
    with applied(pipe.unet, networks):
        return _generate(pipe, settings, replace(settings, prompt=prompt), model, callback)


def _generate(pipe, settings: Settings, encoded: Settings, model, callback) -> Result:
    """The job itself; `encoded` is `settings` with the text the encoder reads (extra-network tags removed)."""
    seed, subseed = resolve_seed(settings.seed), resolve_seed(settings.subseed)
    total = settings.batch_size * settings.n_iter
    seeds, subseeds = job_seeds(seed, subseed, settings.subseed_strength, total)  # processing.py's all_seeds
    encoder = PromptEncoder(pipe.clip, clip_skip=settings.clip_skip)
    init = job = None
    if settings.init_image is not None and settings.mask is not None:
        _as_rgb(settings.init_image, "init_images")  # a ValueError if it is not an image
        job = inpaint.prepare(settings, settings.init_image)  # the picture to encode, its mask, the paste
        init, job = job.init, (job if job.mask is not None else None)
    elif settings.init_image is not None:
        image = _as_rgb(settings.init_image, "init_images")
        init = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, 32, 32)
    pictures = []
    for j in range(settings.n_iter):
        batch = slice(j * settings.batch_size, (j + 1) * settings.batch_size)
        images = run_batch(pipe, encoded, seeds[batch], subseeds[batch], encoder, init, job, callback,
                           fill_seeds=seeds[:settings.batch_size])
        if job is not None:  # the input's pixels laid over the result outside the mask
            images = job.paste(images)
        pictures.append(images)
    images = torch.cat(pictures)  # (N, 3, 32, 32)
    counted = total_steps(job_plan(pipe, settings).grid, settings.steps)
    texts = [infotext.create(settings, seeds[i], subseeds[i], model, i % settings.batch_size, counted)
             for i in range(total)]
    warnings = [f"the prompt has {count} tokens; it is cut into chunks of 75"
                for text, count in encoder.token_counts.items() if count > 75 and text]
    return Result(to_pil(images), seeds, subseeds, texts, settings, sorted(set(warnings)),
                  model_name=model[0], model_hash=model[1])


__all__ = ["Settings", "Result", "generate", "check", "start_step", "sampler_name", "SAMPLERS"]
