"""The web UI's pages: a Gradio Blocks app with its tabs and controls, served with the API by one FastAPI app.

    app = create_app(WebUIState(ModelRegistry(pipe, unet_path, "models/Stable-diffusion")))
    serve(app, "127.0.0.1", 7860)

Tabs: txt2img (with the X/Y/Z plot script and a ControlNet panel, ch. 17),
img2img (with an inpainting mask drawn or uploaded),
PNG Info (read an image's parameters, send them to txt2img or img2img) and Checkpoint Merger. Each
Generate shows a progress bar, with Interrupt and Skip beside it; an error is written under the last
pictures, which stay. Nothing leaves the machine: analytics off, no share link, a system font,
Gradio's run history and footer links off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr
from fastapi import FastAPI

from diffusion_notes.practice.webui import infotext, xyz
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.api_jobs import add_access
from diffusion_notes.practice.webui.app_parts import (
    Output,
    job,
    merger_tab,
    note,
    output_column,
    png_info_tab,
    send_to_img2img,
    shown,
)
from diffusion_notes.practice.webui.controlnet_panel import ControlNetPanel, controlnet_panel
from diffusion_notes.practice.webui.generate import LIMITS, SAMPLER_ALIASES, SIZE, SIZES, Result, Settings
from diffusion_notes.practice.webui.localization import head as localization_head
from diffusion_notes.practice.webui.schedulers import SCHEDULERS
from diffusion_notes.practice.webui.state import WebUIState
from diffusion_notes.practice.webui.upscalers import UPSCALER_NAMES

THEME = gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
# 32x32 pictures drawn large and sharp: in the gallery, and in the upload widgets (which show an image at its size)
CSS = """.dn-gallery img, .dn-input img, #txt2img_controlnet img {image-rendering: pixelated}
.dn-input img, #txt2img_controlnet img {width: 100% !important; height: 100% !important; min-height: 192px;
  object-fit: contain !important}"""
# Each control and the chapter that explains it.
CHAPTERS = {"Sampling method": 2, "Sampling steps": 2, "CFG Scale": 3, "Prompt": 12, "Seed": 1,
            "Denoising strength": 13, "Stable Diffusion checkpoint": 11}


def _label(name: str) -> str:
    return f"{name} (ch. {CHAPTERS[name]})" if name in CHAPTERS else name


def _gallery(result: Result) -> list:
    return [(str(p) if result.paths else im, None) for p, im in zip(result.paths or result.images, result.images)]


def _info(result: Result) -> str:
    return result.infotexts[0] if result.infotexts else ""


@dataclass
class Common:
    """The controls txt2img and img2img share, and the Settings they make."""

    prompt: gr.Textbox
    negative: gr.Textbox
    sampler: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    seed: gr.Number
    subseed: gr.Number
    strength: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    scheduler: gr.Dropdown
    width: gr.Slider
    height: gr.Slider
    reuse: dict | None = None  # the seed's and the variation seed's reuse buttons, by infotext key

    def components(self) -> set:
        return {getattr(self, f.name) for f in fields(self) if f.name != "reuse"}

    def pasted(self) -> dict:
        """The controls an infotext fills: {control: (API field, the value when the infotext lacks it)}."""
        return {self.prompt: ("prompt", ""), self.negative: ("negative_prompt", ""),
                self.sampler: ("sampler_name", "DPM++ 2M"), self.steps: ("steps", 20), self.cfg: ("cfg_scale", 4.0),
                self.seed: ("seed", -1), self.subseed: ("subseed", -1), self.strength: ("subseed_strength", 0.0),
                self.scheduler: ("scheduler", "Automatic"), self.width: ("width", SIZE), self.height: ("height", SIZE)}

    def paste(self, text: str) -> list:
        """The values `pasted()`'s controls get from an infotext."""
        given = infotext.to_settings(infotext.parse(text))
        return [given.get(name, default) for name, default in self.pasted().values()]

    def settings(self, v: dict, **extra) -> Settings:
        """The Settings of the values `v` ({component: value}) an event hands its function."""
        return Settings(prompt=v[self.prompt] or "", negative_prompt=v[self.negative] or "",
                        sampler_name=v[self.sampler], steps=int(v[self.steps]), cfg_scale=float(v[self.cfg]),
                        seed=int(v[self.seed]), subseed=int(v[self.subseed]), subseed_strength=float(v[self.strength]),
                        n_iter=int(v[self.batch_count]), batch_size=int(v[self.batch_size]),
                        scheduler=v[self.scheduler], width=int(v[self.width]), height=int(v[self.height]), **extra)


def _common(prefix: str) -> Common:
    prompt = gr.Textbox(label=_label("Prompt"), lines=3, elem_id=f"{prefix}_prompt",
                        placeholder="Prompt (emphasis (word:1.2), editing [a:b:0.5], a AND b)")
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt")
    with gr.Row():
        sampler = gr.Dropdown(list(SAMPLER_ALIASES), value="DPM++ 2M", label=_label("Sampling method"))
        scheduler = gr.Dropdown([s.label for s in SCHEDULERS], value="Automatic", label="Schedule type")
        steps = gr.Slider(*LIMITS["steps"], value=20, step=1, label=_label("Sampling steps"))
    with gr.Row():  # the model was trained at 32 x 32; larger sizes repeat what it knows (hires fix, ch. 14)
        width = gr.Slider(SIZES[0], SIZES[1], value=SIZE, step=SIZES[2], label="Width")
        height = gr.Slider(SIZES[0], SIZES[1], value=SIZE, step=SIZES[2], label="Height")
    with gr.Row():
        batch_count = gr.Slider(*LIMITS["n_iter"], value=1, step=1, label="Batch count")
        batch_size = gr.Slider(*LIMITS["batch_size"], value=1, step=1, label="Batch size")
    cfg = gr.Slider(*LIMITS["cfg_scale"], value=4.0, step=0.5, label=_label("CFG Scale"))
    with gr.Row():
        seed = gr.Number(-1, precision=0, label=_label("Seed"), elem_id=f"{prefix}_seed")
        random_seed = gr.Button("\U0001f3b2\ufe0f", scale=0, min_width=40, elem_id=f"{prefix}_random_seed")
        reuse_seed = gr.Button("\u267b\ufe0f", scale=0, min_width=40, elem_id=f"{prefix}_reuse_seed")
        subseed = gr.Number(-1, precision=0, label="Variation seed")
        random_subseed = gr.Button("\U0001f3b2\ufe0f", scale=0, min_width=40)
        reuse_subseed = gr.Button("\u267b\ufe0f", scale=0, min_width=40)
        strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength")
    for button in (random_seed, random_subseed):  # -1: a new random seed for each job
        button.click(lambda: -1, [], [seed if button is random_seed else subseed], queue=False)
    reuse = {"Seed": reuse_seed, "Variation seed": reuse_subseed}  # wired to the info box in `_output`
    return Common(prompt, negative, sampler, steps, cfg, seed, subseed, strength, batch_count, batch_size, scheduler,
                  width, height, reuse)


@dataclass
class XYZScript:
    """The X/Y/Z plot script's controls: each axis's type and values, and whether to use it."""

    axes: dict  # xyz.run's keyword ("x_type", "x_values", ...) -> its control
    use: gr.Checkbox

    def components(self) -> set:
        return {*self.axes.values(), self.use}

    def run(self, state: WebUIState, settings: Settings, v: dict) -> tuple[list, str]:
        plot = xyz.run(state.run, settings, **{name: v[c] for name, c in self.axes.items()})
        return [(plot.grid, "X/Y/Z plot")] + [(im, None) for im in plot.images], plot.describe()


def _xyz_script() -> XYZScript:
    axes = {}
    for axis, default in (("x", "CFG Scale"), ("y", "Nothing"), ("z", "Nothing")):
        with gr.Row():
            axes[f"{axis}_type"] = gr.Dropdown(list(xyz.AXES), value=default, label=f"{axis.upper()} type")
            axes[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", placeholder="1, 4, 7")
    return XYZScript(axes, gr.Checkbox(False, label="Use the X/Y/Z plot"))


def _hires_controls() -> dict:
    """Hires fix's controls, by the Settings field each sets: draw small, upscale, redraw as img2img."""
    with gr.Row():
        enable = gr.Checkbox(False, label="Enable", elem_id="txt2img_enable_hr")
        upscaler = gr.Dropdown(UPSCALER_NAMES, value="Latent", label="Upscaler")
    with gr.Row():
        scale = gr.Slider(1, 16, value=2, step=0.05, label="Upscale by")
        steps = gr.Slider(0, LIMITS["steps"][1], value=0, step=1, label="Hires steps (0: the same)")
        strength = gr.Slider(0.01, 1, value=0.7, step=0.01, label="Denoising strength")
    return {"enable_hr": enable, "hr_upscaler": upscaler, "hr_scale": scale, "hr_second_pass_steps": steps,
            "denoising_strength": strength}


@dataclass
class Txt2ImgTab:
    common: Common
    xyz: XYZScript
    controlnet: ControlNetPanel
    output: Output
    send: gr.Button  # "Send to img2img": the first picture and its parameters


def _txt2img_tab(state: WebUIState) -> Txt2ImgTab:
    """txt2img: the shared controls, the X/Y/Z plot script and the ControlNet panel."""
    with gr.Tab("txt2img", id="txt2img"):
        with gr.Row():
            with gr.Column():
                common = _common("txt2img")
                with gr.Accordion("Hires. fix (ch. 14)", open=False):
                    hires = _hires_controls()
                with gr.Accordion("Script: X/Y/Z plot", open=False):
                    script = _xyz_script()
                with gr.Accordion("ControlNet (ch. 17)", open=False, elem_id="txt2img_controlnet"):
                    panel = controlnet_panel(state)
            with gr.Column():
                output = output_column("txt2img", state, common)
                send = gr.Button("Send to img2img", elem_id="txt2img_send_to_img2img")
    tab = Txt2ImgTab(common, script, panel, output, send)

    def txt2img(v: dict, callback):
        unit = panel.unit(v)
        settings = common.settings(v, controlnet=[unit] if unit else [], **{name: v[c] for name, c in hires.items()})
        if v[script.use]:
            return *script.run(state, settings, v), ""
        result = state.run(settings, callback=callback)
        return _gallery(result), _info(result), note(result)

    output.button.click(job(state, txt2img), common.components() | script.components() | panel.components()
                        | set(hires.values()), output.outputs())
    return tab


@dataclass
class Img2ImgTab:
    common: Common
    init: gr.Image  # the img2img sub-tab's image
    sketch: gr.ImageEditor  # Inpaint: the image with the area to redraw painted on it
    upload_init: gr.Image  # Inpaint upload: an image and its mask
    upload_mask: gr.Image
    denoise: gr.Slider
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    area: gr.Radio
    padding: gr.Slider
    output: Output

    def components(self) -> set:
        return self.common.components() | {getattr(self, f.name) for f in fields(self)
                                           if f.name not in ("common", "output")}

    def settings(self, v: dict) -> Settings:
        """The job: the image (and mask) from whichever sub-tab holds one; the denoising and inpainting controls."""
        image, mask = v[self.init], None
        editor = v[self.sketch]
        if editor is not None and editor.get("background") is not None:
            image = editor["background"]
            layer = next((im for im in editor.get("layers") or [] if im is not None), None)
            if layer is not None and layer.convert("RGBA").getchannel("A").getbbox():
                mask = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a else 0)
        if v[self.upload_init] is not None:
            image, mask = v[self.upload_init], v[self.upload_mask]
        if image is None:
            raise ValueError("give an image to start from")
        return self.common.settings(v, init_image=image, mask=mask, denoising_strength=float(v[self.denoise]),
                                    mask_blur=int(v[self.mask_blur]),
                                    inpainting_mask_invert=v[self.mask_mode] == "Inpaint not masked",
                                    inpaint_full_res=v[self.area] == "Only masked",
                                    inpaint_full_res_padding=int(v[self.padding]))


def _img2img_tab(state: WebUIState) -> Img2ImgTab:
    """img2img and inpainting: an image (with a mask painted or uploaded), the shared controls, the strength."""
    with gr.Tab("img2img", id="img2img"):
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("img2img"):
                        init = gr.Image(type="pil", label="Image", image_mode="RGB", elem_classes="dn-input")
                    with gr.Tab("Inpaint"):
                        sketch = gr.ImageEditor(type="pil", label="Paint the area to redraw",
                                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                    with gr.Tab("Inpaint upload"):
                        with gr.Row():
                            upload_init = gr.Image(type="pil", label="Image", elem_classes="dn-input")
                            upload_mask = gr.Image(type="pil", label="Mask (white = redraw)", image_mode="L",
                                                   elem_classes="dn-input")
                common = _common("img2img")
                denoise = gr.Slider(0, 1, value=0.75, step=0.01, label=_label("Denoising strength"))
                with gr.Row():
                    mask_blur = gr.Slider(*LIMITS["mask_blur"], value=0, step=1, label="Mask blur")
                    mask_mode = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
                                         label="Mask mode")
                with gr.Row():
                    area = gr.Radio(["Whole picture", "Only masked"], value="Whole picture", label="Inpaint area")
                    padding = gr.Slider(*LIMITS["inpaint_full_res_padding"], value=4, step=1,
                                        label="Only masked padding, pixels")
            with gr.Column():
                output = output_column("img2img", state, common)
    tab = Img2ImgTab(common, init, sketch, upload_init, upload_mask, denoise, mask_blur, mask_mode, area, padding,
                     output)

    def img2img(v: dict, callback):
        result = state.run(tab.settings(v), callback=callback)
        return _gallery(result), _info(result), note(result)

    output.button.click(job(state, img2img), tab.components(), output.outputs())
    return tab


def refreshed(state: WebUIState) -> list:
    """The checkpoint dropdown (the current model among the files now in the folder) and the merger's A, B, C."""
    titles = [c.title for c in state.registry.refresh()]
    return [gr.Dropdown(choices=titles, value=state.registry.current.title)] + [gr.Dropdown(choices=titles)] * 3


def _checkpoint_row(state: WebUIState) -> tuple[gr.Dropdown, gr.Button]:
    """The checkpoint every tab draws with, and its Refresh button."""
    with gr.Row():
        checkpoint = gr.Dropdown(state.registry.titles(), value=state.registry.current.title,
                                 label=_label("Stable Diffusion checkpoint"), elem_id="sd_model_checkpoint")
        refresh = gr.Button("Refresh", scale=0, elem_id="refresh_sd_model_checkpoint")

    def choose(title):
        with state.lock:
            state.registry.select(title)
        return gr.Dropdown(value=state.registry.current.title)

    checkpoint.input(shown(choose), [checkpoint], [checkpoint])  # the user's choice, not a refresh's
    return checkpoint, refresh


def build_blocks(state: WebUIState) -> gr.Blocks:
    """The pages: the checkpoint row above the txt2img, img2img, PNG Info and Checkpoint Merger tabs.

    Every model list is read again when the page loads and when a Refresh button is pressed, so the
    dropdowns show the model the API chose and the files added since.
    """
    with gr.Blocks(title="Stable Diffusion web UI (diffusion_notes)", analytics_enabled=False) as demo:
        checkpoint, refresh = _checkpoint_row(state)
        with gr.Tabs() as tabs:
            txt2img = _txt2img_tab(state)
            img2img = _img2img_tab(state)
            png_info = png_info_tab(txt2img.common, tabs)
            merging = merger_tab(state, checkpoint)
        send_to_img2img([(txt2img.send, txt2img.output.gallery, txt2img.output.info),
                          (png_info.send_img2img, png_info.image, png_info.text)], img2img, tabs)
        lists = [checkpoint, merging.a, merging.b, merging.c]
        for event in (demo.load, refresh.click, merging.refresh.click):
            event(lambda: refreshed(state), [], lists, queue=False)
    return demo


def create_app(state: WebUIState, api_auth: dict | None = None, gradio_auth: dict | None = None,
               cors_allow_origins=None, localization: str | None = None) -> FastAPI:
    """One FastAPI app: the API under /sdapi/v1 and the Gradio pages at /.

    `api_auth` and `gradio_auth` ({user: password}) ask for a password on the API (HTTP basic auth)
    and on the pages (a login page); `cors_allow_origins` lets pages of those origins call the API;
    `localization` ("zh_CN") labels the pages' controls in that language (webui/localization.py).
    """
    head = localization_head(localization) if localization else None
    app = add_access(create_api(state), api_auth, cors_allow_origins)
    allowed = [str(state.outputs_dir.resolve())] if state.outputs_dir is not None else None
    return gr.mount_gradio_app(app, build_blocks(state), path="/", footer_links=[], run_history=False,
                               ssr_mode=False, mcp_server=False, pwa=False, theme=THEME, css=CSS,
                               allowed_paths=allowed, show_error=True, head=head,
                               auth=list(gradio_auth.items()) if gradio_auth else None)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 7860) -> None:
    import uvicorn

    shown = "127.0.0.1" if host == "0.0.0.0" else host
    print(f"Running on http://{shown}:{port} (API: http://{shown}:{port}/sdapi/v1/)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


class BackgroundServer:
    """The app served by uvicorn in a thread of this process (tests, the chapter's screenshot, benchmarks)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import socket
        import threading
        import time

        import uvicorn

        if port == 0:  # a free port
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]

        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web UI did not start on {self.url}")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
