"""The API's request and response bodies as Pydantic models: what `api.py` accepts and answers.

The settings fields of `Txt2ImgRequest` are built from `generate.Settings`' own fields (name, type,
default), as the web UI builds its StableDiffusionTxt2ImgProcessingAPI from its processing class, so
a setting added to `Settings` is a field of the API. Types are strict, as `generate.check` is: an
int where a float is expected is taken (7 is 7.0), a string or a float where an int is expected is
not. Fields the web UI has and we do not are ignored. A null field keeps its default.

A field of the wrong type is a 422, like a value out of range; a body that is not a JSON object, or
an image, unit list or override that is not the shape the API reads, is a 400 (`http_error`, `BadRequest`).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from diffusion_notes.practice.webui.generate import Settings

# the Settings fields a request sets (the images and the ControlNet units come in their own fields)
SETTINGS = [f for f in fields(Settings) if f.name not in ("init_image", "init_images", "mask", "controlnet")]
# request fields that carry the request's shape (images, nested objects): a wrong one is a 400, with this message
SHAPES = {
    "": "the request body must be a JSON object",
    "init_images": "init_images must be a list holding one base64 image",
    "mask": "mask must be a base64 string",
    "image": 'send {"image": a base64 PNG}',
    "override_settings": "override_settings must be a JSON object",
    "alwayson_scripts": 'alwayson_scripts.controlnet must be {"args": [unit, ...]}, each unit a JSON object',
}
UNIT_VALUES = {"model", "weight", "guidance_start", "guidance_end", "module"}  # a unit's settings: a wrong one is a 422


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ControlNetUnitRequest(Request):
    """One ControlNet unit as the extension's API sends it (ch. 17); `image` may also be called `input_image`."""

    image: str | dict | None = None  # a base64 PNG, or {"image": base64 PNG, "mask": ...}
    input_image: str | dict | None = None
    model: str | None = None
    weight: float | None = None
    guidance_start: float | None = None
    guidance_end: float | None = None
    enabled: bool = Field(True, strict=False)
    module: str | None = "none"  # a preprocessor: only "none" (the condition image as given)


class ControlNetScript(Request):
    args: list[ControlNetUnitRequest]


class AlwaysOnScripts(Request):
    """alwayson_scripts: the ControlNet extension's units (its key spelled either way); other scripts are ignored."""

    controlnet: ControlNetScript | None = None
    ControlNet: ControlNetScript | None = None

    def units(self) -> list[ControlNetUnitRequest]:
        script = self.controlnet or self.ControlNet
        return script.args if script is not None else []


def _settings_fields() -> dict:
    """Settings' fields as Pydantic fields: (type or None, default); a bool is read loosely (1 and "true" are true)."""
    hints = get_type_hints(Settings)
    return {f.name: (hints[f.name] | None, Field(f.default if f.default is not MISSING else None,
                                        strict=hints[f.name] is not bool)) for f in SETTINGS}


_SettingsRequest = create_model("_SettingsRequest", __base__=Request, **_settings_fields())


class Txt2ImgRequest(_SettingsRequest):
    """POST /sdapi/v1/txt2img: the settings, plus the web UI's sampler_index, override_settings and alwayson_scripts."""

    sampler_index: str | None = None  # the web UI's older name for sampler_name
    override_settings: dict[str, Any] | None = None  # only "sd_model_checkpoint" is read: the model for this job
    alwayson_scripts: AlwaysOnScripts | None = None

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
    """POST /sdapi/v1/img2img: txt2img's fields plus one init image and an optional mask (base64 PNGs)."""

    init_images: list[str] = Field(min_length=1, max_length=1)
    mask: str | None = None  # white = redraw


class PngInfoRequest(Request):
    image: str = Field(min_length=1)  # a base64 PNG, with or without a data: prefix


class GenerationResponse(BaseModel):
    images: list[str]  # base64 PNGs, each with its infotext
    parameters: dict[str, Any]  # the settings as understood
    info: str  # a JSON string: seeds, infotexts, model


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
    if where in SHAPES and not (len(loc) > 1 and loc[-1] in UNIT_VALUES):
        return BadRequest(f"{SHAPES[where]} ({'.'.join(loc) or 'body'}: {first['msg']})")
    return ValueError(f"{'.'.join(loc)} must be {_kind(first)}, got {first.get('input')!r}")


def _kind(error: dict) -> str:
    return {"int_type": "an int", "float_type": "a number", "string_type": "a string",
            "bool_type": "true or false"}.get(error["type"], error["msg"].removeprefix("Input should be "))
