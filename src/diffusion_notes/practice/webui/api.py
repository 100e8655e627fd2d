"""The web UI's HTTP API, the subset our models support, on the same FastAPI app as the pages.

    POST /sdapi/v1/txt2img   {"prompt": ..., "steps": 20, "cfg_scale": 4, "sampler_name": "Euler a", ...}
    POST /sdapi/v1/img2img   the same plus "init_images": [base64 PNG], "denoising_strength", "mask"
    POST /sdapi/v1/png-info  {"image": base64 PNG} -> {"info": infotext, "items": {...}, "parameters": {...}}
    GET  /sdapi/v1/loras, /sdapi/v1/embeddings; POST /sdapi/v1/refresh-loras   (<lora:name:w> works in any prompt)
    GET  /controlnet/model_list; "alwayson_scripts": {"controlnet": {"args": [...]}} in txt2img and img2img
    GET  /sdapi/v1/sd-models, /sdapi/v1/samplers;  GET and POST /sdapi/v1/options;  POST /sdapi/v1/refresh-checkpoints

Responses carry base64 PNGs (each with its infotext), "parameters" (the request as understood) and
"info" (a JSON string: seeds, infotexts, model). A bad request gets a 4xx JSON answer
{"error": ..., "detail": "what is wrong"}; fields the web UI has and we do not are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from diffusion_notes.practice.controlnet.units import ControlUnit
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.generate import SAMPLER_ALIASES, WEBUI_NAME, Settings
from diffusion_notes.practice.webui.state import VERSION, WebUIState

FIELDS = {"prompt", "negative_prompt", "steps", "cfg_scale", "sampler_name", "seed", "subseed", "subseed_strength",
          "batch_size", "n_iter", "width", "height", "denoising_strength", "mask_blur", "inpainting_mask_invert",
          "inpaint_full_res", "inpaint_full_res_padding"}
MAX_BODY = 20_000_000


class BadRequest(ValueError):
    pass


def decode_image(data, what: str):
    """A base64 image (with or without a data: prefix) -> PIL image, or BadRequest."""
    if not isinstance(data, str):
        raise BadRequest(f"{what} must be a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None
    return infotext.read_image(raw, what)


def settings_from(body: dict, img2img: bool) -> Settings:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    values = {k: body[k] for k in FIELDS if k in body and body[k] is not None}
    if "sampler_index" in body and "sampler_name" not in values:
        values["sampler_name"] = body["sampler_index"]
    for key in ("inpainting_mask_invert", "inpaint_full_res"):
        if key in values:
            values[key] = bool(values[key])
    for key in ("cfg_scale", "subseed_strength", "denoising_strength"):  # 7 is 7.0
        if isinstance(values.get(key), int) and not isinstance(values[key], bool):
            values[key] = float(values[key])
    settings = Settings(**values)
    if img2img:
        images = body.get("init_images")
        if not isinstance(images, list) or len(images) != 1:
            raise BadRequest("init_images must be a list holding one base64 image")
        settings.init_image = decode_image(images[0], "init_images[0]")
        if body.get("mask"):
            settings.mask = decode_image(body["mask"], "mask")
    settings.controlnet = control_units(body.get("alwayson_scripts"))
    return settings


def control_units(scripts) -> list[ControlUnit]:
    """alwayson_scripts.controlnet.args, as the ControlNet extension reads it -> ControlUnits (ch. 17).

    Each arg: {"image" (base64 PNG; also "input_image"), "model", "weight", "guidance_start", "guidance_end",
    "enabled"}; a disabled unit or one without an image is skipped; "module" (a preprocessor) must be "none".
    """
    if not scripts:
        return []
    if not isinstance(scripts, dict):
        raise BadRequest("alwayson_scripts must be a JSON object")
    script = scripts.get("controlnet") or scripts.get("ControlNet")
    if script is None:
        return []
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list) or not all(isinstance(a, dict) for a in args):
        raise BadRequest('alwayson_scripts.controlnet must be {"args": [unit, ...]}, each unit a JSON object')
    units = []
    for i, arg in enumerate(args):
        image = arg.get("image", arg.get("input_image"))
        if arg.get("enabled", True) is False or not image:
            continue
        if isinstance(image, dict):  # the extension also sends {"image": ..., "mask": ...}
            image = image.get("image")
        if arg.get("module", "none") not in ("none", None):
            raise ValueError(f"controlnet unit {i}: preprocessors are not supported; send the condition image "
                             f"itself with module 'none', got module {arg['module']!r}")
        values = {k: arg[k] for k in ("model", "weight", "guidance_start", "guidance_end") if arg.get(k) is not None}
        for key in ("weight", "guidance_start", "guidance_end"):
            if isinstance(values.get(key), int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
        units.append(ControlUnit(decode_image(image, f"alwayson_scripts.controlnet.args[{i}].image"), **values))
    return units


def error(status: int, err: Exception) -> JSONResponse:
    return JSONResponse({"error": type(err).__name__, "detail": str(err)}, status_code=status)


def create_api(state: WebUIState) -> FastAPI:
    """The API alone, without the pages (and without importing Gradio): for scripts and tests."""
    return add_routes(FastAPI(title="diffusion_notes web UI", docs_url="/docs", redoc_url=None), state)


def add_routes(app: FastAPI, state: WebUIState) -> FastAPI:
    async def body_of(request: Request):
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"the request is {len(raw)} bytes; the limit is {MAX_BODY}")
        try:
            return json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"the request body is not JSON: {err}") from None

    def generate(body, img2img: bool) -> dict:
        settings = settings_from(body, img2img)
        override = body.get("override_settings") or {}
        if not isinstance(override, dict):
            raise BadRequest("override_settings must be a JSON object")
        result = state.run(settings, override.get("sd_model_checkpoint"))
        images = [base64.b64encode(infotext.png_bytes(im, text)).decode("ascii")
                  for im, text in zip(result.images, result.infotexts)]
        s = result.settings
        info = {"prompt": s.prompt, "all_prompts": [s.prompt] * len(images), "negative_prompt": s.negative_prompt,
                "all_negative_prompts": [s.negative_prompt] * len(images), "seed": result.seeds[0],
                "all_seeds": result.seeds, "subseed": result.subseeds[0], "all_subseeds": result.subseeds,
                "subseed_strength": s.subseed_strength, "width": s.width, "height": s.height,
                "sampler_name": s.sampler_name, "cfg_scale": s.cfg_scale, "steps": s.steps,
                "batch_size": s.batch_size, "n_iter": s.n_iter,
                "sd_model_name": (override.get("sd_model_checkpoint") and state.registry.find(
                    override["sd_model_checkpoint"]).model_name) or state.registry.current.model_name,
                "sd_model_hash": infotext.parse(result.infotexts[0]).get("Model hash"),
                "denoising_strength": s.denoising_strength if img2img else None, "index_of_first_image": 0,
                "infotexts": result.infotexts, "warnings": result.warnings,
                "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "version": VERSION}
        return {"images": images, "parameters": {k: v for k, v in s.public().items()}, "info": json.dumps(info)}

    async def run(request: Request, work):
        try:
            body = await body_of(request)
            return JSONResponse(await run_in_threadpool(work, body))
        except BadRequest as err:
            return error(400, err)
        except (ValueError, TypeError) as err:  # a setting out of range, an unknown sampler or checkpoint
            return error(422, err)

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        return await run(request, lambda body: generate(body, img2img=False))

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request):
        return await run(request, lambda body: generate(body, img2img=True))

    @app.post("/sdapi/v1/png-info")
    async def png_info(request: Request):
        def work(body):
            if not isinstance(body, dict) or not body.get("image"):
                raise BadRequest('send {"image": a base64 PNG}')
            text, items = infotext.read(decode_image(body["image"], "image"))
            return {"info": text, "items": items, "parameters": infotext.parse(text) if text else {}}
        return await run(request, work)

    @app.get("/sdapi/v1/loras")
    def loras():
        return [] if state.loras is None else state.loras.api()

    @app.post("/sdapi/v1/refresh-loras")
    def refresh_loras():
        return None

    @app.get("/sdapi/v1/embeddings")
    def embeddings():
        return {"loaded": {e.word: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                    "shape": e.vector.shape[-1], "vectors": 1} for e in state.embeddings},
                "skipped": {}}

    @app.get("/controlnet/model_list")
    def controlnet_models():
        return {"model_list": sorted(state.controlnets)}

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [c.api() for c in state.registry.refresh()]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh():
        state.registry.refresh()
        return None

    @app.get("/sdapi/v1/samplers")
    def samplers():
        ours = {name: sampler for sampler, name in WEBUI_NAME.items()}
        return [{"name": name, "aliases": [ours[name]] if ours.get(name) else [], "options": {}}
                for name in SAMPLER_ALIASES]

    @app.get("/sdapi/v1/options")
    def get_options():
        return state.get_options()

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request):
        return await run(request, state.set_options)

    return app
