"""The web UI's infotext: an image's generation parameters, written into its PNG and read back.

    a small red circle on the left
    Negative prompt: a blue square
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 4, Seed: 1, Size: 32x32, Model hash: 0123456789, Model: ldm_unet

The first lines are the prompt, then (if any) the negative prompt, then one line of `Key: value`
pairs; a value holding a comma, a colon or a quote is written as a JSON string. The text is stored
in the PNG's `parameters` text chunk. `parse` reads it back to the web UI's keys, `to_settings`
to the API's field names.
"""

from __future__ import annotations

import io
import json
import re

from PIL import Image, PngImagePlugin, UnidentifiedImageError

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
NEGATIVE = "Negative prompt:"
# web-UI key -> (API field, type)
FIELDS = {
    "Steps": ("steps", int), "Sampler": ("sampler_name", str), "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int), "Variation seed": ("subseed", int), "Variation seed strength": ("subseed_strength", float),
    "Denoising strength": ("denoising_strength", float), "Mask blur": ("mask_blur", int),
    "Batch size": ("batch_size", int), "Model hash": ("sd_model_hash", str), "Model": ("sd_model_name", str),
}
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


def create(settings, seed: int, subseed: int, model: tuple[str, str] = ("", ""), batch_pos: int = 0) -> str:
    """The infotext of one image of a job (`generate.Settings`), with that image's own seeds."""
    name, short_hash = model
    params = {"Steps": settings.steps, "Sampler": settings.sampler_name, "CFG scale": float(settings.cfg_scale),
              "Seed": seed, "Size": f"{settings.width}x{settings.height}", "Model hash": short_hash or None,
              "Model": name or None}
    if settings.subseed_strength > 0:
        params.update({"Variation seed": subseed, "Variation seed strength": float(settings.subseed_strength)})
    if settings.init_image is not None or getattr(settings, "enable_hr", False):
        params["Denoising strength"] = float(settings.denoising_strength)
    if settings.mask is not None:
        params["Mask blur"] = settings.mask_blur
        if settings.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        if settings.inpaint_full_res:
            params.update({"Inpaint area": "Only masked", "Masked area padding": settings.inpaint_full_res_padding})
    if settings.batch_size > 1:
        params.update({"Batch size": settings.batch_size, "Batch pos": batch_pos})
    if getattr(settings, "enable_hr", False) and settings.init_image is None:
        params.update(_hires(settings))
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\n{NEGATIVE} {settings.negative_prompt}" if settings.negative_prompt else ""
    return f"{settings.prompt}{negative}\n{line}"


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


def to_settings(parsed: dict) -> dict:
    """Parsed infotext -> the API's fields (prompt, negative_prompt, steps, sampler_name, ..., width, height)."""
    out = {"prompt": parsed.get("Prompt", ""), "negative_prompt": parsed.get("Negative prompt", "")}
    for key, (name, kind) in FIELDS.items():
        if key in parsed:
            try:
                out[name] = kind(parsed[key])
            except ValueError:
                raise ValueError(f"the infotext's {key!r} is {parsed[key]!r}, not a {kind.__name__}") from None
    if "Size-1" in parsed:
        out["width"], out["height"] = parsed["Size-1"], parsed["Size-2"]
    for key, (name, kind) in HIRES_FIELDS.items():
        if key in parsed:
            try:
                out[name] = kind(parsed[key])
            except ValueError:
                raise ValueError(f"the infotext's {key!r} is {parsed[key]!r}, not a {kind.__name__}") from None
    if "Denoising strength" in parsed and any(k in parsed for k in ("Hires upscale", "Hires upscaler",
                                                                      "Hires resize-1")):
        out["enable_hr"] = True  # as the web UI reads a pasted infotext
    out.setdefault("subseed_strength", 0.0)
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
