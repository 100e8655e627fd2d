"""The API's request and response bodies as Pydantic models: what `api.py` accepts and answers.

The requests have every field of the web UI's StableDiffusionTxt2ImgProcessingAPI and
StableDiffusionImg2ImgProcessingAPI (its `modules/api/models.py`, built from its processing
classes), with its names and types, read the way it reads them: "20" is 20, 4.0 is 4, 4.5 is not
an int, "true" and 1 are true. The settings fields are built from `generate.Settings`' own fields
(name, type, default), so a setting added to `Settings` is a field of the API. A null field keeps
its default.

`A1111_FIELDS` says, for every field of the web UI's two requests, what the API does with it:

    honoured   it acts as in the web UI (sometimes by doing nothing, where the web UI does nothing
               for a model like ours; the note says so)
    refused    a value other than its default is a 422 that names it (it would change the number
               or the size of the pictures)
    warned     a value other than its default is named in info.warnings, and the job runs without it

`OUR_DEFAULTS` lists the fields whose default is not the web UI's, and why. A field the web UI
does not have either is named in the warnings too. Nothing is dropped without a word.

A field of the wrong type is a 422, like a value out of range; a body that is not a JSON object, or
an image, unit list or override that is not the shape the API reads, is a 400 (`http_error`, `BadRequest`).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from diffusion_notes.practice.webui.generate import Settings

# the Settings fields a request sets (the images, the units and the infotext's extra pairs come their own way)
SETTINGS = [f for f in fields(Settings)
            if f.name not in ("init_image", "init_images", "mask", "controlnet", "extra_generation_params")]
# request fields that carry the request's shape (images, nested objects): a wrong one is a 400, with this message
SHAPES = {
    "": "the request body must be a JSON object",
    "init_images": "init_images must be a list of base64 images",
    "mask": "mask must be a base64 string",
    "image": 'send {"image": a base64 PNG}',
    "override_settings": "override_settings must be a JSON object",
    "alwayson_scripts": 'alwayson_scripts must be a JSON object: {"controlnet": {"args": [unit, ...]}}',
}

H, R, W = "honoured", "refused", "warned"
# every field of the web UI's txt2img and img2img requests (modules/processing.py, modules/api/models.py, v1.10)
A1111_FIELDS = {
    "prompt": (H, ""), "negative_prompt": (H, ""),
    "styles": (H, "styles.csv, applied as the web UI applies it (`styles`); an unknown name is warned"),
    "seed": (H, ""), "subseed": (H, ""), "subseed_strength": (H, ""),
    "seed_resize_from_h": (W, "noise drawn for another size is not offered; -1 and 0 are off"),
    "seed_resize_from_w": (W, "as seed_resize_from_h"),
    "sampler_name": (H, ""), "sampler_index": (H, "the older name of sampler_name, read when it is not given"),
    "scheduler": (H, "a Settings field"),
    "batch_size": (H, ""), "n_iter": (H, ""), "steps": (H, ""), "cfg_scale": (H, ""),
    "width": (H, "a Settings field: a size the model cannot draw is a 422 from generate"),
    "height": (H, "as width"),
    "restore_faces": (W, "there is no face restorer"), "tiling": (W, "seamless tiling is not offered"),
    "do_not_save_samples": (H, "the web UI's API replaces it by `not save_images`, as here"),
    "do_not_save_grid": (H, "as do_not_save_samples; no grid is made"),
    "eta": (H, "a Settings field"), "denoising_strength": (H, "img2img, and hires fix in txt2img"),
    "s_min_uncond": (W, "negative guidance minimum sigma is not offered; None and 0 are off"),
    "s_churn": (H, "a Settings field"), "s_tmax": (H, "a Settings field"), "s_tmin": (H, "a Settings field"),
    "s_noise": (H, "a Settings field"),
    "override_settings": (H, "every option with a Settings field, and the checkpoint (`OVERRIDES`); others warned"),
    "override_settings_restore_afterwards": (H, "false keeps the overrides as the server's options"),
    "refiner_checkpoint": (W, "a refiner pass is not offered"), "refiner_switch_at": (W, "as refiner_checkpoint"),
    "disable_extra_networks": (H, "<lora:...> tags are taken out of the prompt unapplied"),
    "firstpass_image": (W, "hires fix from a given first pass is not offered"),
    "comments": (W, "comments are not written anywhere"),
    "enable_hr": (H, "a Settings field"), "firstphase_width": (H, "read as the first pass's width"),
    "firstphase_height": (H, "read as the first pass's height"), "hr_scale": (H, "a Settings field"),
    "hr_upscaler": (H, "a Settings field"), "hr_second_pass_steps": (H, "a Settings field"),
    "hr_resize_x": (H, "a Settings field"), "hr_resize_y": (H, "a Settings field"),
    "hr_checkpoint_name": (W, "the hires pass runs on the job's checkpoint"),
    "hr_sampler_name": (W, "the hires pass runs with the job's sampler"),
    "hr_scheduler": (W, "the hires pass runs with the job's schedule"),
    "hr_prompt": (H, "a Settings field"), "hr_negative_prompt": (H, "a Settings field"),
    "force_task_id": (W, "jobs are not looked up by id"),
    "script_name": (H, '"x/y/z plot" runs the X/Y/Z plot; another name is a 422, as in the web UI'),
    "script_args": (H, "the X/Y/Z plot's, in the web UI's order (`api_scripts`)"),
    "send_images": (H, ""), "save_images": (H, "the job's PNGs are written only when it is true"),
    "alwayson_scripts": (H, "controlnet; another name is a 422, as in the web UI"),
    "infotext": (H, "fills the fields the request leaves out, as the web UI does"),
    # img2img
    "init_images": (H, "a Settings field (init_images, cycled over the batch)"),
    "resize_mode": (H, "a Settings field"),
    "image_cfg_scale": (H, "used by instruct-pix2pix models only, in the web UI too: ours is not one"),
    "mask": (H, ""), "mask_blur_x": (H, "a Settings field"), "mask_blur_y": (H, "a Settings field"),
    "mask_blur": (H, ""), "mask_round": (H, "a Settings field"), "inpainting_fill": (H, "a Settings field"),
    "inpaint_full_res": (H, ""), "inpaint_full_res_padding": (H, ""), "inpainting_mask_invert": (H, ""),
    "initial_noise_multiplier": (W, "the img2img noise is not scaled; None and 1 are off"),
    "latent_mask": (W, "a separate latent mask is not offered"),
    "include_init_images": (H, "the init images and the mask are echoed in parameters only when true"),
}
TXT2IMG_ONLY = {"enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
                "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
                "hr_scheduler", "hr_prompt", "hr_negative_prompt"}
IMG2IMG_ONLY = {"init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y", "mask_blur",
                "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
                "inpainting_mask_invert", "initial_noise_multiplier", "latent_mask", "include_init_images"}
# the values that leave a refused or warned field off (its default, and the web UI's other "off" values)
OFF = {"seed_resize_from_h": (None, -1, 0), "seed_resize_from_w": (None, -1, 0), "restore_faces": (None, False),
       "tiling": (None, False), "s_min_uncond": (None, 0, 0.0), "refiner_checkpoint": (None, "", "None"),
       "refiner_switch_at": (None,), "firstpass_image": (None, ""), "comments": (None, {}),
       "hr_checkpoint_name": (None, "", "Use same checkpoint"), "hr_sampler_name": (None, ""),
       "hr_scheduler": (None, ""), "force_task_id": (None, ""), "initial_noise_multiplier": (None, 1, 1.0),
       "latent_mask": (None, "")}
# fields whose default here is not the web UI's: (the web UI's default, why ours differs)
OUR_DEFAULTS = {
    "steps": (50, "20 steps of DPM++ 2M draw our 32x32 pictures (Chapter 13)"),
    "cfg_scale": (7.0, "our small model is guided best near 4 (Chapter 13)"),
    "sampler_name": (None, "the web UI's None falls back to sampler_index, 'Euler'; ours is DPM++ 2M"),
    "sampler_index": ("Euler", "None here, so that sampler_name's default stands"),
    "scheduler": (None, "'Automatic', what the web UI's None means"),
    "width": (512, "the model draws 32x32 pictures"), "height": (512, "as width"),
    "s_churn": (None, "0, the web UI's option default that its None reads"),
    "s_tmax": (None, "0 (no limit), as the web UI's None reads its option"),
    "s_tmin": (None, "0, as the web UI's None reads its option"),
    "s_noise": (None, "1, as the web UI's None reads its option"),
    "hr_upscaler": (None, "'Latent', the web UI's default upscaler for a None"),
    "mask_blur": (None, "0: the web UI's 4 pixels of 512 are an eighth of ours"),
    "mask_blur_x": (4, "None: mask_blur's"), "mask_blur_y": (4, "None: mask_blur's"),
    "inpainting_fill": (0, "1, original, draws our masks best"),
    "inpaint_full_res": (True, "False: a 32x32 picture has nothing to gain from a crop"),
    "inpaint_full_res_padding": (0, "4 pixels around the crop"),
    "init_images": (None, "required: an img2img job needs a picture"),
}


class Request(BaseModel):
    """A request body: fields read as the web UI reads them; unknown keys are kept to be named in the warnings."""

    model_config = ConfigDict(extra="allow")


class ControlNetUnitRequest(Request):
    """One unit of the ControlNet extension's API (its `ControlNetUnit`, v1.1.455), field for field.

    `image` may also be called `input_image` and `mask` `mask_image`; `enabled` is true unless sent false.
    """

    image: str | dict | None = None  # a base64 PNG, or {"image": base64 PNG, "mask": ...}
    input_image: str | dict | None = None
    mask: str | dict | None = None
    mask_image: str | dict | None = None
    module: str = "none"
    model: str | None = None  # None: the shipped "controlnet"
    weight: float = 1.0
    resize_mode: str | int = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str | int = "Balanced"
    hr_option: str = "Both"
    enabled: bool = True
    save_detected_map: bool = True
    advanced_weighting: list[float] | None = None
    effective_region_mask: str | None = None


class ControlNetScript(Request):
    args: list[ControlNetUnitRequest | bool | None] = []


def _settings_fields() -> dict:
    """Settings' fields as Pydantic fields: (type or None, default)."""
    hints = get_type_hints(Settings)
    return {f.name: (hints[f.name] | None, Field(f.default if f.default is not MISSING else None)) for f in SETTINGS}


_SettingsRequest = create_model("_SettingsRequest", __base__=Request, **_settings_fields())


class Txt2ImgRequest(_SettingsRequest):
    """POST /sdapi/v1/txt2img: the settings, plus the web UI's other fields (`A1111_FIELDS`)."""

    styles: list[str] | None = None
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_index: str | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    s_min_uncond: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] | None = {}
    infotext: str | None = None

    def values(self) -> dict:
        """The settings the request sets (not null), as `Settings` keywords."""
        given = {f.name: getattr(self, f.name) for f in SETTINGS
                 if f.name in self.model_fields_set and getattr(self, f.name) is not None}
        if "sampler_name" not in given and self.sampler_index is not None:
            given["sampler_name"] = self.sampler_index
        return given

    def checkpoint(self) -> str | None:
        return (self.override_settings or {}).get("sd_model_checkpoint")


class Img2ImgRequest(Txt2ImgRequest):
    """POST /sdapi/v1/img2img: txt2img's fields plus the init images, the mask and img2img's own fields."""

    init_images: list[str] = Field(min_length=1)
    mask: str | None = None  # white = redraw
    image_cfg_scale: float | None = None
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class PngInfoRequest(Request):
    image: str = Field(min_length=1)  # a base64 PNG, with or without a data: prefix


class GenerationResponse(BaseModel):
    images: list[str]  # base64 PNGs, each with its infotext (none when send_images is false)
    parameters: dict[str, Any]  # the request's fields, with the settings as understood
    info: str  # a JSON string: seeds, infotexts, model, warnings


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, str]
    parameters: dict[str, Any]


class BadRequest(ValueError):
    """A request the API cannot read: a 400 (any other ValueError is a 422)."""


def http_error(err: ValidationError) -> ValueError:
    """Pydantic's first complaint as the API's own.

    A BadRequest for the request's shape, else a ValueError naming the field.
    """
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "json_invalid":
        return BadRequest(f"the request body is not JSON: {first['msg']}")
    where = loc[0] if loc else ""
    if where in SHAPES:
        return BadRequest(f"{SHAPES[where]} ({'.'.join(loc) or 'body'}: {first['msg']})")
    return ValueError(f"{'.'.join(loc)} must be {_kind(first)}, got {first.get('input')!r}")


def _kind(error: dict) -> str:
    return {"int_type": "an int", "int_parsing": "an int", "int_from_float": "an int", "float_type": "a number",
            "float_parsing": "a number", "string_type": "a string", "bool_type": "true or false",
            "bool_parsing": "true or false"}.get(error["type"], error["msg"].removeprefix("Input should be "))
