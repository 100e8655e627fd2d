"""The web UI's HTTP API on the same FastAPI app as the pages: the web UI's /sdapi/v1, and its extensions'.

    POST /sdapi/v1/txt2img   {"prompt": ..., "steps": 20, "cfg_scale": 4, "sampler_name": "Euler a", ...}
    POST /sdapi/v1/img2img   the same plus "init_images": [base64 PNG, ...], "denoising_strength", "mask"
    POST /sdapi/v1/png-info  {"image": base64 PNG} -> {"info": infotext, "items": {...}, "parameters": {...}}
    GET  /sdapi/v1/loras, /sdapi/v1/embeddings; POST /sdapi/v1/refresh-loras   (<lora:name:te:unet> works in any prompt)
    GET  /controlnet/model_list; "alwayson_scripts": {"controlnet": {"args": [...]}} in txt2img and img2img
    GET  /sdapi/v1/sd-models, /sdapi/v1/samplers;  GET and POST /sdapi/v1/options;  POST /sdapi/v1/refresh-checkpoints
    the rest of the web UI's routes (`api_routes`) and the ControlNet extension's (`api_controlnet`)

A generation request has every field of the web UI's (`api_models.A1111_FIELDS`) and is read as it
reads it (`api_requests`): infotext, options and overrides, styles, the X/Y/Z plot (`api_scripts`),
ControlNet units. The answer carries base64 PNGs (each with its infotext; none if send_images is
false; then each ControlNet unit's map), "parameters" (the request's fields with the settings as
understood) and "info" (a JSON string: seeds, infotexts, model, and the warnings: every field that
was set and not applied). PNGs are written only when save_images is true. A bad request gets a 4xx
JSON answer {"error", "detail", "body", "errors"}: 400 for a body the API cannot read, 405 for a
method a route does not take, 422 for a setting of the wrong type, out of range or not offered.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace

from fastapi import FastAPI, Request

from diffusion_notes.practice.controlnet.units import ControlUnit
from diffusion_notes.practice.webui import infotext, xyz
from diffusion_notes.practice.webui.api_controlnet import add_controlnet_routes, read_units
from diffusion_notes.practice.webui.api_docs import add_docs, with_request_bodies
from diffusion_notes.practice.webui.api_io import MAX_BODY, answer, decode_image, error, png64  # noqa: F401
from diffusion_notes.practice.webui.api_jobs import add_job_routes
from diffusion_notes.practice.webui.api_models import (
    GenerationResponse,
    Img2ImgRequest,
    PngInfoRequest,
    PngInfoResponse,
    Txt2ImgRequest,
)
from diffusion_notes.practice.webui.api_requests import Job, build_job, styles_of
from diffusion_notes.practice.webui.api_routes import add_sdapi_routes
from diffusion_notes.practice.webui.api_scripts import check_alwayson, plot_arguments
from diffusion_notes.practice.webui.generate import SAMPLER_ALIASES, WEBUI_NAME, Result
from diffusion_notes.practice.webui.state import VERSION, WebUIState


def control_units(scripts) -> list[ControlUnit]:
    """alwayson_scripts (a request's dict), as the ControlNet extension reads it -> ControlUnits (ch. 17)."""
    return read_units(check_alwayson(scripts), decode_image)[0]


def prepare(request: Txt2ImgRequest, state: WebUIState) -> tuple[Job, list]:
    """The request's job, its images decoded and its ControlNet units read; and the units' maps."""
    job = build_job(request, state)
    settings = job.settings
    if isinstance(request, Img2ImgRequest):
        images = [decode_image(b64, f"init_images[{i}]") for i, b64 in enumerate(request.init_images)]
        settings.init_image, settings.init_images = images[0], images
        if request.mask:
            settings.mask = decode_image(request.mask, "mask")
    units, maps, params, warnings = read_units(check_alwayson(request.alwayson_scripts), decode_image)
    settings.controlnet = units
    settings.extra_generation_params = {**settings.extra_generation_params, **params}
    job.warnings += warnings
    return job, maps


def run_request(request: Txt2ImgRequest, state: WebUIState) -> GenerationResponse:
    """A txt2img or img2img request, run: the script it names, or one job."""
    plot = plot_arguments(request.script_name, request.script_args, isinstance(request, Img2ImgRequest))
    job, maps = prepare(request, state)
    if plot is None:
        result = state.run(job.settings, job.checkpoint, save=job.save)
    else:
        job.warnings += plot.pop("warnings")
        result = run_plot(state, job, plot)
    if job.keep:
        state.set_options(job.keep)
    return respond(result, request, job, maps)


def run_plot(state: WebUIState, job: Job, plot: dict) -> Result:
    """The X/Y/Z plot: one job per cell; the grid first (with the plot's settings in its infotext), then the cells."""
    cells = []

    def cell(settings):
        cells.append(state.run(settings, job.checkpoint, save=job.save))
        return cells[-1]

    lone = plot.pop("include_lone_images")
    drawn = xyz.run(cell, job.settings, **plot)
    axes = {f"{a.upper()} {k}": plot[f"{a}_{k.lower()}"] for a in "xyz" for k in ("Type", "Values")
            if plot[f"{a}_type"] != "Nothing"}
    first = cells[0]
    grid_settings = replace(first.settings, extra_generation_params={**first.settings.extra_generation_params,
                                                                     "Script": "X/Y/Z plot", **axes})
    grid_text = infotext.create(grid_settings, first.seeds[0], first.subseeds[0], (first.model_name, first.model_hash))
    images, texts = [drawn.grid], [grid_text]
    seeds, subseeds = [first.seeds[0]], [first.subseeds[0]]
    if lone:
        images, texts = images + drawn.images, texts + drawn.infotexts
        seeds, subseeds = seeds + [c.seeds[0] for c in cells], subseeds + [c.subseeds[0] for c in cells]
    warnings = sorted({w for c in cells for w in c.warnings})
    return Result(images, seeds, subseeds, texts, first.settings, warnings, first.model_name, first.model_hash)


def respond(result: Result, request: Txt2ImgRequest, job: Job, maps: list) -> GenerationResponse:
    """A job's result as the web UI answers it: base64 PNGs (each with its infotext), the parameters, the info."""
    images = [base64.b64encode(infotext.png_bytes(im, text)).decode("ascii")
              for im, text in zip(result.images, result.infotexts)] + [png64(m) for m in maps]
    s, n = result.settings, len(result.images)
    info = {"prompt": s.prompt, "all_prompts": [s.prompt] * n, "negative_prompt": s.negative_prompt,
            "all_negative_prompts": [s.negative_prompt] * n, "seed": result.seeds[0], "all_seeds": result.seeds,
            "subseed": result.subseeds[0], "all_subseeds": result.subseeds, "subseed_strength": s.subseed_strength,
            "width": s.width, "height": s.height, "sampler_name": s.sampler_name, "cfg_scale": s.cfg_scale,
            "steps": s.steps, "batch_size": s.batch_size, "n_iter": s.n_iter, "restore_faces": None,
            "face_restoration_model": None, "sd_model_name": result.model_name or None,
            "sd_model_hash": result.model_hash or None, "sd_vae_name": None, "sd_vae_hash": None,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": s.denoising_strength if s.init_image is not None or s.enable_hr else None,
            "extra_generation_params": s.extra_generation_params, "index_of_first_image": 0,
            "infotexts": result.infotexts, "styles": request.styles or [], "clip_skip": s.clip_skip,
            "is_using_inpainting_conditioning": False, "warnings": [*result.warnings, *job.warnings],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "version": VERSION}
    return GenerationResponse(images=images if job.send else [], parameters=parameters(request, result),
                              info=json.dumps(info, default=str))


def parameters(request: Txt2ImgRequest, result: Result) -> dict:
    """The request's fields as the web UI echoes them (images only if include_init_images), with ours as understood."""
    out = request.model_dump(exclude={"alwayson_scripts", "firstpass_image", "latent_mask"})
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        out.update(init_images=None, mask=None)
    return {**out, **result.settings.public()}


def png_info(request: PngInfoRequest, state: WebUIState) -> PngInfoResponse:
    """The image's infotext, parsed; styles the prompts carry come back as "Styles array", as the web UI reads them."""
    text, items = infotext.read(decode_image(request.image, "image"))
    parsed = infotext.parse(text) if text else {}
    if parsed:
        found, prompt, negative = styles_of(state).extract(parsed["Prompt"], parsed["Negative prompt"])
        if found:
            parsed.update({"Prompt": prompt, "Negative prompt": negative, "Styles array": found})
    return PngInfoResponse(info=text, items=items, parameters=parsed)


def create_api(state: WebUIState) -> FastAPI:
    """The API alone, without the pages (and without importing Gradio): for scripts and tests."""
    app = add_routes(FastAPI(title="diffusion_notes web UI", docs_url=None, redoc_url=None), state)
    add_docs(with_request_bodies(app, {"/sdapi/v1/txt2img": Txt2ImgRequest, "/sdapi/v1/img2img": Img2ImgRequest,
                                       "/sdapi/v1/png-info": PngInfoRequest}))  # Swagger UI, offline
    add_sdapi_routes(app, state)
    add_controlnet_routes(app, state)
    # progress, interrupt, skip on the state's queue (an API with no state, as a test of the samplers list
    # builds, has none); and a JSON answer for any error
    return add_job_routes(app, state) if state is not None else app


def add_routes(app: FastAPI, state: WebUIState) -> FastAPI:
    @app.post("/sdapi/v1/txt2img", response_model=GenerationResponse)
    async def txt2img(request: Request):
        return await answer(request, Txt2ImgRequest, lambda body: run_request(body, state))

    @app.post("/sdapi/v1/img2img", response_model=GenerationResponse)
    async def img2img(request: Request):
        return await answer(request, Img2ImgRequest, lambda body: run_request(body, state))

    @app.post("/sdapi/v1/png-info", response_model=PngInfoResponse)
    async def png_info_route(request: Request):
        return await answer(request, PngInfoRequest, lambda body: png_info(body, state))

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
