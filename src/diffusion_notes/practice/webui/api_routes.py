"""The rest of the web UI's /sdapi/v1 routes that scripts call, answered with what this server has.

    GET  scripts, script-info             the X/Y/Z plot and the ControlNet extension (`api_scripts`)
    GET  schedulers, upscalers, latent-upscale-modes, sd-vae, hypernetworks, face-restorers, realesrgan-models
    GET  prompt-styles                    the styles.csv (`styles`);  POST refresh-embeddings, refresh-vae
    GET  memory, cmd-flags                RAM (and the accelerator's), the server's own settings
    POST unload-checkpoint, reload-checkpoint   the model's weights to the CPU and back
    POST extra-single-image, extra-batch-images   upscale pictures with the upscalers we have (None, Lanczos, Nearest)
    POST interrogate                      the caption the book's CLIP ranks highest (`interrogate`)

A route asked with a method it does not take is a 405, as FastAPI answers when no page catches it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from diffusion_notes.practice.webui import interrogate
from diffusion_notes.practice.webui import schedulers as webui_schedulers
from diffusion_notes.practice.webui import upscalers as webui_upscalers
from diffusion_notes.practice.webui.api_io import answer, decode_image, error, png64
from diffusion_notes.practice.webui.api_requests import OPTION_DEFAULTS, styles_of
from diffusion_notes.practice.webui.api_scripts import script_info, scripts_list
from diffusion_notes.practice.webui.styles import StyleDatabase

RESAMPLE = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}  # the upscalers besides "None"


def upscalers() -> list[dict]:
    """GET /sdapi/v1/upscalers: the pixel upscalers hires fix and the extras tab have (`upscalers.api_upscalers`)."""
    return webui_upscalers.api_upscalers()


def latent_upscale_modes() -> list[dict]:
    """GET /sdapi/v1/latent-upscale-modes: hires fix's latent upscalers (`upscalers.api_latent_upscale_modes`)."""
    return webui_upscalers.api_latent_upscale_modes()


def schedulers() -> list[dict]:
    """GET /sdapi/v1/schedulers: the web UI's schedule types (`schedulers.api_list`)."""
    return webui_schedulers.api_list()


class ExtrasRequest(BaseModel):
    """POST /sdapi/v1/extra-single-image, field for field as the web UI's ExtrasSingleImageRequest."""

    model_config = ConfigDict(extra="allow")
    image: str = ""
    imageList: list[dict] = []  # extra-batch-images, the web UI's name: [{"data": base64, "name": ...}]
    resize_mode: int = Field(0, ge=0, le=1)
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, le=8)
    upscaling_resize_w: int = Field(512, ge=1, le=4096)
    upscaling_resize_h: int = Field(512, ge=1, le=4096)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


def _upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
    """One upscaler: None leaves the picture; the others resize to (w, h) x scale, rounded down to 8 (the web UI's)."""
    if name == "None":
        return image
    if name not in RESAMPLE:
        raise ValueError(f"unknown upscaler {name!r}; the upscalers are {', '.join(u['name'] for u in upscalers())}")
    size = (max(8, int(image.width * scale) // 8 * 8), max(8, int(image.height * scale) // 8 * 8))
    return image.resize(size, RESAMPLE[name])


def extras(request: ExtrasRequest, decode) -> dict:
    """The picture upscaled by `upscaling_resize`, or to w x h (cropped to it if asked), upscaler 2 blended in."""
    image = decode(request.image, "image").convert("RGB")
    w, h = request.upscaling_resize_w, request.upscaling_resize_h
    scale = request.upscaling_resize if request.resize_mode == 0 else max(w / image.width, h / image.height)
    out = _upscale(image, request.upscaler_1, scale)
    if request.upscaler_2 != "None" and request.extras_upscaler_2_visibility > 0:
        second = _upscale(image, request.upscaler_2, scale).resize(out.size, Image.LANCZOS)
        out = Image.blend(out, second, request.extras_upscaler_2_visibility)
    if request.resize_mode == 1 and request.upscaling_crop and out.size != (w, h) and request.upscaler_1 != "None":
        left, top = max(0, (out.width - w) // 2), max(0, (out.height - h) // 2)
        out = out.crop((left, top, left + min(w, out.width), top + min(h, out.height)))
    notes = [f"{name}={getattr(request, name)} was not applied: there is no face restorer"
             for name in ("gfpgan_visibility", "codeformer_visibility") if getattr(request, name) > 0]
    if request.model_extra:
        notes.append(f"unknown field(s) ignored: {', '.join(sorted(request.model_extra))}")
    info = f"<p>{request.upscaler_1}: {image.width}x{image.height} -> {out.width}x{out.height}</p>"
    return {"html_info": info + "".join(f"<p>{n}</p>" for n in notes),
            "image": png64(out) if request.show_extras_results else None}


def memory() -> dict:
    """GET /sdapi/v1/memory: {"ram": {"free", "used", "total"}, "cuda": {...}} in bytes, as the web UI reports them."""
    try:
        import psutil

        process = psutil.Process(os.getpid())
        used, total = process.memory_info().rss, psutil.virtual_memory().total
        ram = {"free": total - used, "used": used, "total": total}
    except Exception as err:  # psutil missing or refusing: the web UI reports the error the same way
        ram = {"error": str(err)}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "unavailable"}}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    pair = {k: {"current": stats.get(f"{k}_bytes.all.current", 0), "peak": stats.get(f"{k}_bytes.all.peak", 0)}
            for k in ("allocated", "reserved", "active")}
    return {"ram": ram, "cuda": {"system": {"free": free, "used": total - free, "total": total}, **pair,
                                 "events": {"retries": stats.get("num_alloc_retries", 0),
                                            "oom": stats.get("num_ooms", 0)}}}


def cmd_flags(state) -> dict:
    """GET /sdapi/v1/cmd-flags: the web UI's flags that this server has, with its values."""
    loras = getattr(state.loras, "folder", None)
    flags = {"api": True, "nowebui": False, "ckpt_dir": _path(state.registry.models_dir),
             "lora_dir": _path(loras), "data_dir": _path(getattr(state.outputs_dir, "parent", None)),
             "styles_file": [_path(styles_of(state).path)] if styles_of(state).path else [],
             "listen": False, "port": None, "api_auth": None, "cors_allow_origins": None}
    return {**flags, **getattr(state, "cmd_flags", {})}


def _path(path) -> str | None:
    return None if path is None else str(path)


def move_model(state, device) -> dict:
    """The current checkpoint's parts to `device` ("cpu" to unload); returns {} as the web UI does."""
    with state.lock:
        pipe, _ = state.registry.pipeline()
        state.loaded_device = getattr(state, "loaded_device", None) or pipe.device
        for part in (pipe.unet, pipe.vae, pipe.clip):
            part.to(device or state.loaded_device)
    return {}


def interrogate_route(body: dict, state, decode) -> dict:
    """POST /sdapi/v1/interrogate {"image", "model": "clip"} -> {"caption"}."""
    model = body.get("model", "clip")
    if model != "clip":
        raise ValueError(f"interrogate model {model!r} is not offered here; the model is 'clip' (the book's CLIP)")
    image = decode(body.get("image"), "image")
    with state.lock:
        clip = state.registry.pipeline()[0].clip
        return {"caption": interrogate.interrogate(clip, image)}


def add_sdapi_routes(app: FastAPI, state) -> FastAPI:

    if state is not None:
        for key, value in OPTION_DEFAULTS.items():  # the options jobs read, settable by POST /sdapi/v1/options
            state.options.setdefault(key, value)
        if getattr(state, "styles", None) is None:  # the styles.csv beside the outputs folder
            data = getattr(state.outputs_dir, "parent", None)
            state.styles = StyleDatabase(Path(data) / "styles.csv" if data is not None else None)
    app.get("/sdapi/v1/scripts")(scripts_list)
    app.get("/sdapi/v1/script-info")(script_info)
    app.get("/sdapi/v1/schedulers")(schedulers)
    app.get("/sdapi/v1/upscalers")(upscalers)
    app.get("/sdapi/v1/latent-upscale-modes")(latent_upscale_modes)
    app.get("/sdapi/v1/memory")(memory)
    for empty in ("sd-vae", "hypernetworks", "face-restorers", "realesrgan-models"):  # none of these here
        app.get(f"/sdapi/v1/{empty}")(lambda: [])
    app.get("/sdapi/v1/prompt-styles")(lambda: styles_of(state).api())
    app.get("/sdapi/v1/cmd-flags")(lambda: cmd_flags(state))
    app.post("/sdapi/v1/refresh-embeddings")(lambda: None)  # the shipped embeddings are always on
    app.post("/sdapi/v1/refresh-vae")(lambda: None)  # the one autoencoder is every checkpoint's
    app.post("/sdapi/v1/unload-checkpoint")(lambda: move_model(state, "cpu"))
    app.post("/sdapi/v1/reload-checkpoint")(lambda: move_model(state, None))

    @app.post("/sdapi/v1/extra-single-image")
    async def extra_single_image(request: Request):
        return await answer(request, ExtrasRequest, lambda body: extras(body, decode_image))

    @app.post("/sdapi/v1/extra-batch-images")
    async def extra_batch_images(request: Request):
        def work(body: ExtrasRequest) -> dict:
            done = [extras(body.model_copy(update={"image": item.get("data", "")}), decode_image)
                    for item in body.imageList]
            return {"html_info": "".join(d["html_info"] for d in done), "images": [d["image"] for d in done]}

        return await answer(request, ExtrasRequest, work)

    @app.post("/sdapi/v1/interrogate")
    async def interrogate_api(request: Request):
        return await answer(request, None, lambda body: interrogate_route(body if isinstance(body, dict) else {},
                                                                         state, decode_image))

    @app.middleware("http")
    async def method_not_allowed(request: Request, call_next):
        allowed = {m for r in app.routes if isinstance(r, APIRoute) and r.path == request.url.path for m in r.methods}
        if allowed and request.method not in allowed and not (request.method == "HEAD" and "GET" in allowed):
            response = error(405, ValueError(f"{request.url.path} takes {', '.join(sorted(allowed))}, "
                                             f"not {request.method}"))
            response.headers["Allow"] = ", ".join(sorted(allowed))
            return response
        return await call_next(request)

    return app
