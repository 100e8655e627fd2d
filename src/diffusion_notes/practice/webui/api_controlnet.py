"""The ControlNet extension's API (ch. 17): its units in alwayson_scripts, and its /controlnet routes.

    "alwayson_scripts": {"controlnet": {"args": [{"image": <base64>, "module": "canny", "model": "controlnet",
                                                   "weight": 1.0, "resize_mode": "Crop and Resize",
                                                   "control_mode": "Balanced", "pixel_perfect": false}]}}

    GET  /controlnet/version        {"version": 3}
    GET  /controlnet/model_list     {"model_list": [...]}             (api.py)
    GET  /controlnet/module_list    {"module_list": [...], "module_detail": {...}}
    GET  /controlnet/control_types  {"control_types": {"All": {...}, "Canny": {...}}}
    GET  /controlnet/settings       {"control_net_unit_count": 3}
    POST /controlnet/detect         {"controlnet_module": "canny", "controlnet_input_images": [...]}
                                    -> {"images": [...], "info": "Success"}

A unit's picture goes through its preprocessor ("module") and its resize mode to the 32x32
condition (`preprocessors`); each unit's map comes back after the pictures, as the extension
returns it, unless the unit says save_detected_map: false. The units' settings are written into
the infotext as "ControlNet 0: ...". Fields of a unit that change nothing here are named in the
warnings when they are not at their defaults.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from PIL import Image
from pydantic import ValidationError

from diffusion_notes.practice.controlnet import preprocessors
from diffusion_notes.practice.controlnet.units import CONTROL_MODES, ControlUnit
from diffusion_notes.practice.webui.api_io import answer, decode_image, png64
from diffusion_notes.practice.webui.api_models import BadRequest, ControlNetScript, ControlNetUnitRequest

API_VERSION = 3  # the extension's external_code.get_api_version()
UNIT_COUNT = 3  # the extension's default number of units (control_net_unit_count)
# unit fields that change nothing here, with the values that say so
INERT = {"low_vram": (False,), "hr_option": ("Both", "Low res only", "High res only"), "advanced_weighting": (None,),
         "effective_region_mask": (None, ""), "mask": (None, ""), "mask_image": (None, "")}
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")


def control_mode(value) -> str:
    """The extension's control mode from its name or number (0 Balanced, 1 prompt, 2 ControlNet)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CONTROL_MODES):
        return CONTROL_MODES[value]
    if value not in CONTROL_MODES:
        raise ValueError(f"control_mode must be one of {', '.join(CONTROL_MODES)} or 0-2, got {value!r}")
    return value


def read_units(entry, decode) -> tuple[list[ControlUnit], list[Image.Image], dict, list[str]]:
    """alwayson_scripts' ControlNet entry -> (units, their maps, infotext pairs, warnings).

    `decode(b64, what)` reads a base64 image. A disabled unit, or one without a picture, is skipped.
    """
    if entry is None:
        return [], [], {}, []
    try:
        args = ControlNetScript.model_validate(entry).args
    except ValidationError as err:
        parts = [str(p) for p in err.errors()[0]["loc"] if p != "ControlNetUnitRequest"]
        loc = ".".join(parts)
        if len(parts) > 2:  # a unit's value: a 422
            raise ValueError(f"alwayson_scripts.controlnet.{loc}: {err.errors()[0]['msg']}") from None
        raise BadRequest('alwayson_scripts.controlnet must be {"args": [unit, ...]}, each unit a JSON object '
                         f"({loc}: {err.errors()[0]['msg']})") from None
    units, maps, params, warnings = [], [], {}, []
    for i, arg in enumerate(a for a in args if isinstance(a, ControlNetUnitRequest)):
        image = arg.image or arg.input_image
        if isinstance(image, dict):  # the extension also takes {"image": ..., "mask": ...}
            image = image.get("image")
        if not arg.enabled or not image:
            continue
        where = f"alwayson_scripts.controlnet.args[{i}]"
        mode, resize = control_mode(arg.control_mode), preprocessors.resize_mode(arg.resize_mode)
        condition, _ = preprocessors.condition_image(decode(image, f"{where}.image"), arg.module, resize, 32,
                                                     arg.processor_res, arg.threshold_a, arg.threshold_b,
                                                     arg.pixel_perfect)
        unit = ControlUnit(condition, control_mode=mode, **arg.model_dump(
            include={"model", "weight", "guidance_start", "guidance_end"}, exclude_none=True))
        units.append(unit)
        if arg.save_detected_map:
            maps.append(condition)
        params[f"ControlNet {len(units) - 1}"] = unit_infotext(arg, unit, resize)
        warnings += [f"{where}.{name}={getattr(arg, name)!r} was not applied" for name, off in INERT.items()
                     if getattr(arg, name) not in off]
        if arg.model_extra:
            warnings.append(f"{where}: unknown field(s) ignored: {', '.join(sorted(arg.model_extra))}")
    return units, maps, params, warnings


def unit_infotext(arg: ControlNetUnitRequest, unit: ControlUnit, resize: str) -> str:
    """The extension's infotext value of a unit: "Module: canny, Model: controlnet, Weight: 1.0, ..."."""
    values = {**arg.model_dump(include=set(INFOTEXT_FIELDS)), "model": unit.model, "weight": unit.weight,
              "resize_mode": resize, "control_mode": unit.control_mode}
    return ", ".join(f"{' '.join(w.capitalize() for w in name.split('_'))}: {values[name]}"
                     for name in INFOTEXT_FIELDS)


def modules(alias_names: bool = False) -> dict:
    names = [m.label if alias_names else m.name for m in preprocessors.MODULES.values()]
    detail = {m.label if alias_names else m.name: m.api() for m in preprocessors.MODULES.values()}
    return {"module_list": names, "module_detail": detail}


def control_types(models: list[str]) -> dict:
    """Each control type's preprocessors and models, as the extension's select_control_type gives them."""
    every = list(preprocessors.MODULES.values())
    tags = sorted({t for m in every for t in m.tags})
    out = {"All": {"module_list": [m.label for m in every], "model_list": ["None", *models],
                   "default_option": "none", "default_model": "None"}}
    for tag in tags:
        mods = [m.label for m in every if tag in m.tags or m.name == "none"]
        out[tag] = {"module_list": mods, "model_list": ["None", *models], "default_option": mods[1],
                    "default_model": models[0] if models else "None"}
    return {"control_types": out}


def detect(body: dict, decode) -> dict:
    """POST /controlnet/detect: each picture through the preprocessor, the maps as base64 PNGs."""
    name = body.get("controlnet_module", "none")
    pictures = body.get("controlnet_input_images") or body.get("controlnet_images") or []  # webuiapi's older name
    if not isinstance(pictures, list) or not pictures:
        raise ValueError("No image selected: send controlnet_input_images, a list of base64 pictures")
    preprocessors.module(name)  # a 422 for a module that is not here
    res, a, b = (body.get(k, -1) for k in ("controlnet_processor_res", "controlnet_threshold_a",
                                          "controlnet_threshold_b"))
    for k, v in (("controlnet_processor_res", res), ("controlnet_threshold_a", a), ("controlnet_threshold_b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{k} must be a number, got {v!r}")
    maps = [preprocessors.detect(name, decode(p, f"controlnet_input_images[{i}]"), res, a, b)
            for i, p in enumerate(pictures)]
    return {"images": [png64(m) for m in maps], "info": "Success"}


def add_controlnet_routes(app: FastAPI, state) -> FastAPI:
    """The extension's routes besides model_list (which api.add_routes serves)."""

    @app.get("/controlnet/version")
    def version():
        return {"version": API_VERSION}

    @app.get("/controlnet/module_list")
    def module_list(alias_names: bool = False):
        return modules(alias_names)

    @app.get("/controlnet/control_types")
    def types():
        return control_types(sorted(state.controlnets))

    @app.get("/controlnet/settings")
    def settings():
        return {"control_net_unit_count": UNIT_COUNT}

    @app.post("/controlnet/detect")
    async def detect_route(request: Request):
        return await answer(request, None, lambda body: detect(body if isinstance(body, dict) else {}, decode_image))

    return app
