"""The web UI's infotext: an image's generation parameters, written into its PNG and read back.

    a small red circle on the left
    Negative prompt: a blue square
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 4, Seed: 1, Size: 32x32, Model hash: 0123456789, Model: ldm_unet

The first lines are the prompt, then (if any) the negative prompt, then one line of `Key: value`
pairs; a value holding a comma, a colon or a quote is written as a JSON string. After the
settings come the job's other pairs (`Settings.extra_generation_params`: "Lora hashes", one
"ControlNet N" per unit) and last the program's "Version", as the web UI writes them. The text is stored
in the PNG's `parameters` text chunk. `parse` reads it back to the web UI's keys, `to_settings`
to the API's field names.
"""

from __future__ import annotations

import io
import json
import re

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from diffusion_notes import __version__
from diffusion_notes.practice.webui.inpaint import FILLS, blur_sizes
from diffusion_notes.practice.webui.prompts import old_rule_matters
from diffusion_notes.practice.webui.schedulers import find, sampler_options

VERSION = f"diffusion_notes-v{__version__}"  # the infotext's "Version"

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NEGATIVE = "Negative prompt:"


def flag(text: str) -> bool:
    """An infotext's True or False."""
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"


# web-UI key -> (API field, type)
FIELDS = {
    "Steps": ("steps", int), "Sampler": ("sampler_name", str), "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int), "Variation seed": ("subseed", int), "Variation seed strength": ("subseed_strength", float),
    "Denoising strength": ("denoising_strength", float), "Mask blur": ("mask_blur", int),
    "Batch size": ("batch_size", int), "Model hash": ("sd_model_hash", str), "Model": ("sd_model_name", str),
    "ENSD": ("eta_noise_seed_delta", int), "RNG": ("randn_source", str),
    "Masked area padding": ("inpaint_full_res_padding", int),
    "Clip skip": ("clip_skip", int), "Old prompt editing timelines": ("old_prompt_editing", flag),
    "Schedule type": ("scheduler", str), "Eta": ("eta", float), "Eta DDIM": ("eta", float),
    "Sigma churn": ("s_churn", float), "Sigma tmin": ("s_tmin", float), "Sigma tmax": ("s_tmax", float),
    "Sigma noise": ("s_noise", float),
}
# the sampler options the web UI writes when they differ from their defaults (its Sampler.initialize)
OPTION_KEYS = {"eta_ancestral": ("Eta", 1.0), "eta": ("Eta DDIM", 0.0), "s_churn": ("Sigma churn", 0.0),
               "s_tmin": ("Sigma tmin", 0.0), "s_tmax": ("Sigma tmax", float("inf")), "s_noise": ("Sigma noise", 1.0)}
# hires fix's keys (the web UI writes them when enable_hr is on)
HIRES_FIELDS = {
    "Hires upscale": ("hr_scale", float), "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str), "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str), "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
}


def _quote(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def create(settings, seed: int, subseed: int, model: tuple[str, str] = ("", ""), batch_pos: int = 0,
           schedule_steps: int | None = None) -> str:
    """The infotext of one image of a job (`generate.Settings`), with that image's own seeds.

    `schedule_steps` is the count its prompt schedules ran over (`conditioning.total_steps`; the
    steps by default): "Old prompt editing timelines" is written, as the web UI writes it, when
    that option is on and changes a schedule.
    """
    name, short_hash = model
    params = {"Steps": settings.steps, "Sampler": settings.sampler_name, "CFG scale": float(settings.cfg_scale),
              "Seed": seed, "Size": f"{settings.width}x{settings.height}", "Model hash": short_hash or None,
              "Model": name or None}
    params.update(_sampler_params(settings))
    if settings.subseed_strength > 0:
        params.update({"Variation seed": subseed, "Variation seed strength": float(settings.subseed_strength)})
    if settings.init_image is not None or getattr(settings, "enable_hr", False):
        params["Denoising strength"] = float(settings.denoising_strength)
    if settings.mask is not None:
        blur_x, blur_y = blur_sizes(settings)
        if blur_x > 0 or blur_y > 0:  # the web UI's mask_blur: None (not written) when x and y differ
            params["Mask blur"] = blur_x if blur_x == blur_y else None
        if settings.inpainting_fill != 1:
            params["Masked content"] = FILLS[settings.inpainting_fill]
        if settings.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        if settings.inpaint_full_res:
            params.update({"Inpaint area": "Only masked", "Masked area padding": settings.inpaint_full_res_padding})
    if settings.batch_size > 1:
        params.update({"Batch size": settings.batch_size, "Batch pos": batch_pos})
    if settings.eta_noise_seed_delta:
        params["ENSD"] = settings.eta_noise_seed_delta
    if settings.randn_source != "GPU":  # the web UI writes its noise source only when it is not the default
        params["RNG"] = settings.randn_source
    if settings.clip_skip > 1:
        params["Clip skip"] = settings.clip_skip
    if settings.old_prompt_editing and old_rule_matters([settings.prompt, settings.negative_prompt],
                                                         schedule_steps or settings.steps):
        params["Old prompt editing timelines"] = True
    if getattr(settings, "enable_hr", False) and settings.init_image is None:
        params.update(_hires(settings))
    params.update(getattr(settings, "extra_generation_params", None) or {})
    params["Version"] = VERSION
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\n{NEGATIVE} {settings.negative_prompt}" if settings.negative_prompt else ""
    return f"{settings.prompt}{negative}\n{line}"


def _sampler_params(settings) -> dict:
    """"Schedule type" unless Automatic, and each option the sampler takes that is not its default."""
    params = {} if find(settings.scheduler).label == "Automatic" else {"Schedule type": find(settings.scheduler).label}
    options = sampler_options(settings.sampler_name, settings.eta, settings.s_churn, settings.s_tmin,
                              settings.s_tmax, settings.s_noise)
    for name, value in options.items():
        key, default = OPTION_KEYS[name]
        if value != default:
            params[key] = float(value)
    return params


def _hires(settings) -> dict:
    """Hires fix's keys, in the order the web UI's txt2img `init` adds them."""
    params = {}
    if settings.hr_prompt and settings.hr_prompt != settings.prompt:
        params["Hires prompt"] = settings.hr_prompt
    if settings.hr_negative_prompt and settings.hr_negative_prompt != settings.negative_prompt:
        params["Hires negative prompt"] = settings.hr_negative_prompt
    if settings.hr_resize_x == 0 and settings.hr_resize_y == 0:
        params["Hires upscale"] = float(settings.hr_scale)
    else:
        params["Hires resize"] = f"{settings.hr_resize_x}x{settings.hr_resize_y}"
    if settings.hr_second_pass_steps:
        params["Hires steps"] = settings.hr_second_pass_steps
    params["Hires upscaler"] = settings.hr_upscaler
    return params


def parse(text: str) -> dict:
    """The web UI's keys of an infotext: "Prompt", "Negative prompt", "Steps", ..., "Size-1", "Size-2"."""
    if not isinstance(text, str):
        raise ValueError(f"an infotext is a string, got {type(text).__name__}")
    *lines, last = text.strip("\n").split("\n") if text.strip() else [""]
    if len(_PARAM.findall(last)) < 3:  # no parameters line: it is all prompt
        lines, last = lines + [last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE):
            in_negative, line = True, line[len(NEGATIVE):].lstrip(" ")
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = int(size[1]), int(size[2])
        else:
            result[key] = value
    return result


def _typed(parsed: dict, fields: dict) -> dict:
    """The API's fields of `fields` ({infotext key: (field, type)}) that the infotext gives, converted."""
    out = {}
    for key, (name, kind) in fields.items():
        if key in parsed:
            try:
                out[name] = kind(parsed[key])
            except ValueError:
                raise ValueError(f"the infotext's {key!r} is {parsed[key]!r}, not a {kind.__name__}") from None
    return out


def to_settings(parsed: dict) -> dict:
    """Parsed infotext -> the API's fields (prompt, negative_prompt, steps, sampler_name, ..., width, height)."""
    out = {"prompt": parsed.get("Prompt", ""), "negative_prompt": parsed.get("Negative prompt", "")}
    out.update(_typed(parsed, FIELDS))
    if "Masked content" in parsed:
        out["inpainting_fill"] = {name: fill for fill, name in FILLS.items()}.get(parsed["Masked content"], 1)
    if "Mask mode" in parsed:
        out["inpainting_mask_invert"] = parsed["Mask mode"] == "Inpaint not masked"
    if "Inpaint area" in parsed:
        out["inpaint_full_res"] = parsed["Inpaint area"] == "Only masked"
    if "Size-1" in parsed:
        out["width"], out["height"] = parsed["Size-1"], parsed["Size-2"]
    out.update(_typed(parsed, HIRES_FIELDS))
    if "Denoising strength" in parsed and any(k in parsed for k in ("Hires upscale", "Hires upscaler",
                                                                      "Hires resize-1")):
        out["enable_hr"] = True  # as the web UI reads a pasted infotext
    out.setdefault("subseed_strength", 0.0)
    out.setdefault("randn_source", "GPU")  # no "RNG": the web UI's default source
    out.setdefault("clip_skip", 1)  # the web UI reads a missing "Clip skip" as 1
    version = re.match(r"v?(\d+)\.(\d+)\.(\d+)", parsed.get("Version", ""))
    if version and tuple(map(int, version.groups())) < (1, 6, 0) and "[" in out["prompt"]:
        out.setdefault("old_prompt_editing", True)  # the web UI's backcompat for infotexts before 1.6.0
    return out


def png_bytes(image: Image.Image, text: str) -> bytes:
    """The image as PNG bytes with `text` in its `parameters` chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="png", pnginfo=info)
    return buffer.getvalue()


def read_image(data: bytes, what: str = "the image") -> Image.Image:
    """Bytes of an image file -> a loaded PIL image, or a ValueError that says it is not one."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{what} is not an image file PIL can read ({len(data)} bytes)") from None
    return image


def read(image: Image.Image) -> tuple[str, dict]:
    """(the `parameters` text, every other text chunk) of an image; "" when it has none."""
    items = {k: v for k, v in getattr(image, "text", image.info).items() if isinstance(v, str)}
    return items.pop("parameters", ""), items
