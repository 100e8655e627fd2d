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

import torch
from PIL import Image

from diffusion_notes.data.images import to_pil
from diffusion_notes.foundations.grids import RegistryView, grid_index
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, SAMPLERS
from diffusion_notes.practice.controlnet.units import ControlledUNet, ControlUnit
from diffusion_notes.practice.finetune.lora_files import applied
from diffusion_notes.practice.webui import hires, infotext, inpaint
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
from diffusion_notes.practice.webui.resize import check_resize_mode, latent_resize, resize_image
from diffusion_notes.practice.webui.schedulers import check_options, webui_plan
from diffusion_notes.practice.webui.seeds import ImageRNG, job_seeds, resolve_seed
from diffusion_notes.practice.webui.upscalers import check_upscaler
from diffusion_notes.stable_diffusion.denoise import denoise
from diffusion_notes.stable_diffusion.denoise import webui_start as start_step  # the web UI's img2img start

SIZE = 32  # the size our models were trained at, and the default width and height
SIZES = (32, 512, 8)  # width and height: multiples of 8 from 32 to 512 (the web UI's default, 512x512, included)
FACTOR = 4  # our VAE's downsampling factor f: a W x H picture is drawn as a (4, H/f, W/f) latent
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
    check_size(settings.width, settings.height)
    resolve_seed(settings.seed), resolve_seed(settings.subseed)
    settings.sampler_name = sampler_name(settings.sampler_name)
    if isinstance(settings.clip_skip, bool) or not isinstance(settings.clip_skip, int) or settings.clip_skip < 1:
        raise ValueError(f"clip_skip must be an int >= 1 (1 = the text encoder's last layer), got {settings.clip_skip!r}")
    if not isinstance(settings.old_prompt_editing, bool):
        raise ValueError(f"old_prompt_editing must be true or false, got {settings.old_prompt_editing!r}")
    check_options(settings)  # the scheduler, eta, s_churn, s_tmin, s_tmax and s_noise
    _check_init_images(settings)
    if settings.enable_hr:
        _check_hires(settings)
    if settings.mask is not None and settings.init_image is None:
        raise ValueError("a mask needs an init image (inpainting redraws part of an image)")
    if settings.mask is not None and settings.resize_mode == 3:
        raise ValueError("inpainting takes resize_mode 0, 1 or 2 (the mask is resized with the picture), got 3")
    if (settings.mask is not None or settings.controlnet) and (settings.width, settings.height) != (SIZE, SIZE):
        raise ValueError(f"inpainting and ControlNet draw {SIZE}x{SIZE} pictures only, got "
                         f"{settings.width}x{settings.height}")
    inpaint.check(settings)
    for unit in settings.controlnet:
        unit.check()
    return settings


def check_size(width, height, what: str = "") -> tuple[int, int]:
    """(width, height) if each is a multiple of 8 from 32 to 512, else a ValueError that says so."""
    lo, hi, step = SIZES
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi or value % step:
            raise ValueError(f"{what}{name} must be a multiple of {step} from {lo} to {hi}, got {value!r}")
    return width, height


def _check_init_images(settings: Settings):
    """init_images (or init_image, its first) as the web UI takes them; the batch is as many as they are."""
    if not isinstance(settings.init_images, (list, tuple)):
        raise ValueError(f"init_images must be a list of images, got {type(settings.init_images).__name__}")
    for i, image in enumerate(settings.init_images):
        if not hasattr(image, "convert") or not hasattr(image, "size"):
            raise ValueError(f"init_images[{i}] must be an image, got {type(image).__name__}")
    if settings.init_images and settings.init_image is None:
        settings.init_image = settings.init_images[0]
    count = len(settings.init_images)
    if count > settings.batch_size:
        raise ValueError(f"{count} init_images for a batch of {settings.batch_size}; send batch_size or fewer "
                         "(one image is used for the whole batch, k images make a batch of k)")
    if count > 1:
        settings.batch_size = count
    check_resize_mode(settings.resize_mode)


def _check_hires(settings: Settings):
    """The hires fix settings, and the size its second pass would draw (a multiple of 8 up to 512)."""
    if settings.init_image is not None:
        raise ValueError("hires fix (enable_hr) is for txt2img; img2img draws at width x height directly")
    value = settings.hr_scale
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"hr_scale must be a positive number, got {value!r}")
    for name, most in (("hr_resize_x", 4 * SIZES[1]), ("hr_resize_y", 4 * SIZES[1]),
                       ("hr_second_pass_steps", LIMITS["steps"][1])):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            raise ValueError(f"{name} must be an int from 0 to {most} (0: not set), got {value!r}")
    for name in ("hr_prompt", "hr_negative_prompt"):
        if not isinstance(getattr(settings, name), str):
            raise ValueError(f"{name} must be a string, got {getattr(settings, name)!r}")
        for part in getattr(settings, name).split("AND"):
            parse_prompt_attention(part)
    check_upscaler(settings.hr_upscaler)
    hires.second_pass_steps(1, settings.denoising_strength)  # 0 has no second pass
    target = hires.target_size(settings.width, settings.height, settings.hr_scale, settings.hr_resize_x,
                               settings.hr_resize_y, FACTOR)
    width, height = target.final(FACTOR)
    if max(target.width, target.height) > 4 * SIZES[1]:
        raise ValueError(f"hires fix would upscale to {target.width}x{target.height} before its crop; "
                         f"the most is {4 * SIZES[1]} a side")
    check_size(width, height, what=f"hires fix would draw {width}x{height}; its ")


def _as_rgb(image, what: str, settings: Settings) -> Image.Image:
    """The input picture as RGB, width x height as the resize mode says (mode 3: left as it is)."""
    if not hasattr(image, "convert"):
        raise ValueError(f"{what} must be an image")
    return resize_image(settings.resize_mode, image.convert("RGB"), settings.width, settings.height)


def job_plan(pipe, settings: Settings, steps: int | None = None):
    """The sampler's plan for the job (`steps`, default settings.steps): its grid under the web UI's
    schedule type, with its options."""
    return webui_plan(settings.sampler_name, steps or settings.steps, pipe.schedule, settings.scheduler, eta=settings.eta,
                      s_churn=settings.s_churn, s_tmin=settings.s_tmin, s_tmax=settings.s_tmax,
                      s_noise=settings.s_noise)


@torch.no_grad()
def run_batch(pipe, settings: Settings, seeds: list[int], subseeds: list[int], encoder: PromptEncoder,
              init: torch.Tensor | None = None, mask: inpaint.Inpainting | None = None, callback=None,
              fill_seeds: list[int] | None = None, grid_steps: int | None = None, start: int | None = None,
              decode: bool = True) -> torch.Tensor:
    """One batch drawn at width x height: latents (B, 4, H/f, W/f) -> decoded images (B, 3, H, W) in [0, 1].

    `init`: the input's latents (1 or B, 4, H/f, W/f) for img2img; `mask`: the job's `inpaint.Inpainting`,
    `fill_seeds` its first batch's seeds. The sampler's grid has `grid_steps` steps (default
    settings.steps) and the loop starts at step `start` (default: txt2img's 0, or img2img's start for
    the denoising strength); `decode=False` returns the latents.
    """
    B, n, c, f = len(seeds), settings.steps, pipe.unet.config, pipe.vae.downsampling_factor
    plan = job_plan(pipe, settings, grid_steps or n)
    rng = ImageRNG((c.in_channels, settings.height // f, settings.width // f), seeds, subseeds,
                   settings.subseed_strength, eta_noise_seed_delta=settings.eta_noise_seed_delta,
                   randn_source=settings.randn_source, device=pipe.device)
    noise = rng.next()  # (B, 4, H/f, W/f): the first draw is the starting noise; later ones are the steps'
    z0 = None if init is None else init.to(pipe.device).expand(B, -1, -1, -1)  # (B, 4, H/f, W/f)
    if start is None:
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
    if mask is not None:
        z = inpaint.denoise_masked(model, plan, noise, z0, mask, settings, fill_seeds or seeds, start_step=start,
                                   noise=rng.next, callback=callback)
    else:
        z = denoise(model, plan, noise, z0=z0, start_step=start, noise=rng.next, callback=callback)
    return pipe.decode_latents(z).cpu() if decode else z  # (B, 3, H, W) or (B, 4, H/f, W/f)


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
    hr_prompt, hr_tags = parse_extra_networks(settings.hr_prompt)
    if settings.enable_hr and settings.hr_prompt and hr_tags != tags:
        raise ValueError("the hires prompt must name the same extra networks as the prompt (one UNet draws both passes)")
    networks = loras.networks(tags) if tags else []
    if networks:
        settings = replace(settings, extra_generation_params={**settings.extra_generation_params,
                                                              "Lora hashes": loras.hashes(tags)})
    with applied(pipe.unet, networks):
        return _generate(pipe, settings, replace(settings, prompt=prompt, hr_prompt=hr_prompt), model, callback)


def _generate(pipe, settings: Settings, encoded: Settings, model, callback) -> Result:
    """The job itself; `encoded` is `settings` with the text the encoder reads (extra-network tags removed)."""
    seed, subseed = resolve_seed(settings.seed), resolve_seed(settings.subseed)
    total = settings.batch_size * settings.n_iter
    seeds, subseeds = job_seeds(seed, subseed, settings.subseed_strength, total)  # processing.py's all_seeds
    encoder = PromptEncoder(pipe.clip, clip_skip=settings.clip_skip)
    init = job = None
    if settings.init_image is not None and settings.mask is not None:
        _as_rgb(settings.init_image, "init_images", settings)  # a ValueError if it is not an image
        job = inpaint.prepare(settings, settings.init_image)  # the picture to encode, its mask, the paste
        init, job = hires.encode(pipe, job.init), (job if job.mask is not None else None)  # (1, 4, H/f, W/f)
    elif settings.init_image is not None:
        inputs = [_as_rgb(image, f"init_images[{i}]", settings)
                  for i, image in enumerate(settings.init_images or [settings.init_image])]
        init = _init_latents(pipe, settings, inputs) if settings.resize_mode == 3 \
            else hires.encode(pipe, hires.as_tensor(inputs))  # (k, 4, H/f, W/f): k = 1 or the batch
    pictures = []
    for j in range(settings.n_iter):
        batch = slice(j * settings.batch_size, (j + 1) * settings.batch_size)
        if settings.enable_hr:
            images = _hires_batch(pipe, settings, encoded, seeds[batch], subseeds[batch], encoder, callback)
        else:
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


def _init_latents(pipe, settings: Settings, inputs: list[Image.Image]) -> torch.Tensor:
    """Resize mode 3: each input encoded at its own size, its latent resized to (H/f, W/f) -> (k, 4, H/f, W/f)."""
    f = pipe.vae.downsampling_factor
    return torch.cat([latent_resize(hires.encode(pipe, hires.as_tensor([image])), settings.height // f,
                                    settings.width // f) for image in inputs])


def _hires_batch(pipe, settings: Settings, encoded: Settings, seeds: list[int], subseeds: list[int],
                 encoder: PromptEncoder, callback) -> torch.Tensor:
    """txt2img with hires fix: the first pass at width x height, upscaled, redrawn -> (B, 3, H', W').

    The second pass is img2img on the upscaled latent with `hr_second_pass_steps` (0: the first pass's
    steps) run at the end of a longer grid, the hires prompts (empty: the first pass's), and fresh
    noise from every image's own seed, drawn at the new size as the first pass's was.
    """
    f = pipe.vae.downsampling_factor
    z = run_batch(pipe, encoded, seeds, subseeds, encoder, callback=callback, decode=False)  # (B, 4, H/f, W/f)
    target = hires.target_size(settings.width, settings.height, settings.hr_scale, settings.hr_resize_x,
                               settings.hr_resize_y, f)
    z0 = hires.upscale(pipe, z, target, settings.hr_upscaler)  # (B, 4, H'/f, W'/f)
    steps = settings.hr_second_pass_steps or settings.steps
    total, start = hires.second_pass_steps(steps, settings.denoising_strength)
    width, height = target.final(f)
    second = replace(encoded, prompt=encoded.hr_prompt or encoded.prompt, steps=steps, width=width, height=height,
                     negative_prompt=encoded.hr_negative_prompt or encoded.negative_prompt)
    return run_batch(pipe, second, seeds, subseeds, encoder, z0, callback=callback, grid_steps=total, start=start)


__all__ = ["Settings", "Result", "generate", "check", "start_step", "sampler_name", "SAMPLERS"]
