"""The web UI's HTTP API, the subset our models support, on the same FastAPI app as the pages.

    POST /sdapi/v1/txt2img   {"prompt": ..., "steps": 20, "cfg_scale": 4, "sampler_name": "Euler a", ...}
    POST /sdapi/v1/img2img   the same plus "init_images": [base64 PNG], "denoising_strength", "mask"
    POST /sdapi/v1/png-info  {"image": base64 PNG} -> {"info": infotext, "items": {...}, "parameters": {...}}
    GET  /sdapi/v1/loras, /sdapi/v1/embeddings; POST /sdapi/v1/refresh-loras   (<lora:name:w> works in any prompt)
    GET  /controlnet/model_list; "alwayson_scripts": {"controlnet": {"args": [...]}} in txt2img and img2img
    GET  /sdapi/v1/sd-models, /sdapi/v1/samplers;  GET and POST /sdapi/v1/options;  POST /sdapi/v1/refresh-checkpoints

Responses carry base64 PNGs (each with its infotext), "parameters" (the request as understood) and
"info" (a JSON string: seeds, infotexts, model). The bodies are the Pydantic models of `api_models`.
A bad request gets a 4xx JSON answer {"error": ..., "detail": "what is wrong"}: 400 for a body the
API cannot read, 422 for a setting of the wrong type or out of range; fields the web UI has and we
do not are ignored.
"""

from __future__ import annotations

import base64
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from diffusion_notes.practice.controlnet.units import ControlUnit
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.api_jobs import add_job_routes
from diffusion_notes.practice.webui.api_models import (
    AlwaysOnScripts,
    BadRequest,
    GenerationResponse,
    Img2ImgRequest,
    PngInfoRequest,
    PngInfoResponse,
    Txt2ImgRequest,
    http_error,
)
from diffusion_notes.practice.webui.generate import SAMPLER_ALIASES, WEBUI_NAME, Result, Settings
from diffusion_notes.practice.webui.inputs import InputError, decode_image, read_body, read_json
from diffusion_notes.practice.webui.state import VERSION, WebUIState

MAX_BODY = 20_000_000


def settings_from(request: Txt2ImgRequest) -> Settings:
    """A txt2img or img2img request -> the job's Settings, its images decoded and its ControlNet units read."""
    settings = Settings(**request.values())
    if isinstance(request, Img2ImgRequest):
        settings.init_image = decode_image(request.init_images[0], "init_images[0]")
        if request.mask:
            settings.mask = decode_image(request.mask, "mask")
    settings.controlnet = control_units(request.alwayson_scripts)
    return settings


def control_units(scripts: AlwaysOnScripts | dict | None) -> list[ControlUnit]:
    """alwayson_scripts.controlnet.args, as the ControlNet extension reads it -> ControlUnits (ch. 17).

    Each arg: {"image" (base64 PNG; also "input_image"), "model", "weight", "guidance_start", "guidance_end",
    "enabled"}; a disabled unit or one without an image is skipped; "module" (a preprocessor) must be "none".
    """
    if not scripts:
        return []
    if not isinstance(scripts, AlwaysOnScripts):  # a dict, as a request's "alwayson_scripts"
        scripts = _parse(Txt2ImgRequest, {"alwayson_scripts": scripts}).alwayson_scripts
    units = []
    for i, arg in enumerate(scripts.units()):
        image = arg.image or arg.input_image
        if not arg.enabled or not image:
            continue
        if isinstance(image, dict):  # the extension also sends {"image": ..., "mask": ...}
            image = image.get("image")
        if arg.module not in ("none", None):
            raise ValueError(f"controlnet unit {i}: preprocessors are not supported; send the condition image "
                             f"itself with module 'none', got module {arg.module!r}")
        values = arg.model_dump(include={"model", "weight", "guidance_start", "guidance_end"}, exclude_none=True)
        units.append(ControlUnit(decode_image(image, f"alwayson_scripts.controlnet.args[{i}].image"), **values))
    return units


def respond(result: Result) -> GenerationResponse:
    """A job's result as the web UI answers it: base64 PNGs (each with its infotext), the settings, the info."""
    images = [base64.b64encode(infotext.png_bytes(im, text)).decode("ascii")
              for im, text in zip(result.images, result.infotexts)]
    s, n = result.settings, len(result.images)
    info = {"prompt": s.prompt, "all_prompts": [s.prompt] * n, "negative_prompt": s.negative_prompt,
            "all_negative_prompts": [s.negative_prompt] * n, "seed": result.seeds[0], "all_seeds": result.seeds,
            "subseed": result.subseeds[0], "all_subseeds": result.subseeds, "subseed_strength": s.subseed_strength,
            "width": s.width, "height": s.height, "sampler_name": s.sampler_name, "cfg_scale": s.cfg_scale,
            "steps": s.steps, "batch_size": s.batch_size, "n_iter": s.n_iter,
            "sd_model_name": result.model_name or None, "sd_model_hash": result.model_hash or None,
            "denoising_strength": s.denoising_strength if s.init_image is not None else None,
            "index_of_first_image": 0, "infotexts": result.infotexts, "warnings": result.warnings,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "version": VERSION}
    return GenerationResponse(images=images, parameters=s.public(), info=json.dumps(info))


def png_info(request: PngInfoRequest) -> PngInfoResponse:
    text, items = infotext.read(decode_image(request.image, "image"))
    return PngInfoResponse(info=text, items=items, parameters=infotext.parse(text) if text else {})


async def answer(request: Request, model, work):
    """Read the body as `model` (any JSON when None), run `work` on it in a thread; errors as 4xx JSON."""
    try:
        raw = await read_body(request, MAX_BODY)
        body = _parse(model, raw)
        result = await run_in_threadpool(work, body)
        return JSONResponse(result.model_dump() if hasattr(result, "model_dump") else result)
    except (BadRequest, InputError) as err:
        return error(400, err)
    except (ValueError, TypeError) as err:  # a setting out of range or of the wrong type, an unknown sampler
        return error(422, err)
    except RecursionError as err:  # an input nested deeper than its reader goes
        return error(422, ValueError(f"the request nests too deeply to be read: {err}"))


def _parse(model, raw: bytes):
    body = read_json(raw) if isinstance(raw, bytes) else raw  # a 400 for a body not JSON or nested too deep
    if model is None:
        return body
    try:
        return model.model_validate_json(raw or b"{}") if isinstance(raw, bytes) else model.model_validate(raw)
    except ValidationError as err:
        raise http_error(err) from None


def error(status: int, err: Exception) -> JSONResponse:
    return JSONResponse({"error": type(err).__name__, "detail": str(err)}, status_code=status)


def create_api(state: WebUIState) -> FastAPI:
    """The API alone, without the pages (and without importing Gradio): for scripts and tests."""
    app = add_routes(FastAPI(title="diffusion_notes web UI", docs_url="/docs", redoc_url=None), state)
    return add_job_routes(app, state)  # progress, interrupt, skip; a JSON answer for any error


def add_routes(app: FastAPI, state: WebUIState) -> FastAPI:
    def generate(request: Txt2ImgRequest) -> GenerationResponse:
        return respond(state.run(settings_from(request), request.checkpoint(),
                                 save=bool(getattr(request, "save_images", False))))

    @app.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
    async def txt2img(request: Request):
        return await answer(request, Txt2ImgRequest, generate)

    @app.post("/sdapi/v1/img2img", response_model=GenerationResponse)
    async def img2img(request: Request):
        return await answer(request, Img2ImgRequest, generate)

    @app.post("/sdapi/v1/png-info", response_model=PngInfoResponse)
    async def png_info_route(request: Request):
        return await answer(request, PngInfoRequest, png_info)

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request):
        return await answer(request, None, state.set_options)

    @app.get("/sdapi/v1/options")
    def get_options():
        return state.get_options()

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [c.api() for c in state.registry.refresh()]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints():
        state.registry.refresh()

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

    app.get("/sdapi/v1/samplers")(samplers)
    return app


def samplers() -> list[dict]:
    """GET /sdapi/v1/samplers: the web UI's names, each with ours as its alias."""
    ours = {name: sampler for sampler, name in WEBUI_NAME.items()}
    return [{"name": name, "aliases": [ours[name]] if ours.get(name) else [], "options": {}}
            for name in SAMPLER_ALIASES]
