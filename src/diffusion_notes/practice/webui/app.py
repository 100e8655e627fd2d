"""The web UI's pages: a Gradio Blocks app with its tabs and controls, served with the API by one FastAPI app.

    app = create_app(WebUIState(ModelRegistry(pipe, unet_path, "models/Stable-diffusion")))
    serve(app, "127.0.0.1", 7860)

Tabs: txt2img (with the X/Y/Z plot script and a ControlNet panel, ch. 17),
img2img (with an inpainting mask drawn or uploaded),
PNG Info (read an image's parameters, send them to txt2img) and Checkpoint Merger. Nothing leaves
the machine: analytics off, no share link, a system font, Gradio's run history and footer links off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr
from fastapi import FastAPI

from diffusion_notes.practice.webui import infotext, merger, xyz
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.controlnet_panel import ControlNetPanel, controlnet_panel
from diffusion_notes.practice.webui.generate import LIMITS, SAMPLER_ALIASES, Result, Settings
from diffusion_notes.practice.webui.state import WebUIState

THEME = gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
CSS = ".dn-gallery img, .dn-input img {image-rendering: pixelated}"
# Each control and the chapter that explains it.
CHAPTERS = {"Sampling method": 2, "Sampling steps": 2, "CFG Scale": 3, "Prompt": 12, "Seed": 1,
            "Denoising strength": 13, "Stable Diffusion checkpoint": 11}


def _label(name: str) -> str:
    return f"{name} (ch. {CHAPTERS[name]})" if name in CHAPTERS else name


def _gallery(result: Result) -> list:
    return [(str(p) if result.paths else im, None) for p, im in zip(result.paths or result.images, result.images)]


def _info(result: Result) -> str:
    return "\n\n".join([result.infotexts[0], *result.warnings])


def _shown(fn):
    """`fn` for an event: a ValueError or a missing file becomes a message on the page."""
    def call(*values):
        try:
            return fn(*values)
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from None
    return call


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

    def components(self) -> set:
        return {getattr(self, f.name) for f in fields(self)}

    def settings(self, v: dict, **extra) -> Settings:
        """The Settings of the values `v` ({component: value}) an event hands its function."""
        return Settings(prompt=v[self.prompt] or "", negative_prompt=v[self.negative] or "",
                        sampler_name=v[self.sampler], steps=int(v[self.steps]), cfg_scale=float(v[self.cfg]),
                        seed=int(v[self.seed]), subseed=int(v[self.subseed]), subseed_strength=float(v[self.strength]),
                        n_iter=int(v[self.batch_count]), batch_size=int(v[self.batch_size]), **extra)


def _common(prefix: str) -> Common:
    prompt = gr.Textbox(label=_label("Prompt"), lines=3, elem_id=f"{prefix}_prompt",
                        placeholder="Prompt (emphasis (word:1.2), editing [a:b:0.5], a AND b)")
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt")
    with gr.Row():
        sampler = gr.Dropdown(list(SAMPLER_ALIASES), value="DPM++ 2M", label=_label("Sampling method"))
        steps = gr.Slider(*LIMITS["steps"], value=20, step=1, label=_label("Sampling steps"))
    with gr.Row():
        batch_count = gr.Slider(*LIMITS["n_iter"], value=1, step=1, label="Batch count")
        batch_size = gr.Slider(*LIMITS["batch_size"], value=1, step=1, label="Batch size")
    cfg = gr.Slider(*LIMITS["cfg_scale"], value=4.0, step=0.5, label=_label("CFG Scale"))
    with gr.Row():
        seed = gr.Number(-1, precision=0, label=_label("Seed"), elem_id=f"{prefix}_seed")
        subseed = gr.Number(-1, precision=0, label="Variation seed")
        strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength")
    gr.Markdown("Width and height: 32 × 32, the only size this model draws.")
    return Common(prompt, negative, sampler, steps, cfg, seed, subseed, strength, batch_count, batch_size)


@dataclass
class Output:
    """A tab's Generate button, gallery and generation info."""

    button: gr.Button
    gallery: gr.Gallery
    info: gr.Textbox


def _output(prefix: str) -> Output:
    button = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
    gallery = gr.Gallery(label="Output", columns=4, elem_id=f"{prefix}_gallery", elem_classes="dn-gallery")
    info = gr.Textbox(label="Generation info", lines=4, elem_id=f"{prefix}_info")
    return Output(button, gallery, info)


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


@dataclass
class Txt2ImgTab:
    common: Common
    xyz: XYZScript
    controlnet: ControlNetPanel
    output: Output


def _txt2img_tab(state: WebUIState) -> Txt2ImgTab:
    """txt2img: the shared controls, the X/Y/Z plot script and the ControlNet panel."""
    with gr.Tab("txt2img", id="txt2img"):
        with gr.Row():
            with gr.Column():
                common = _common("txt2img")
                with gr.Accordion("Script: X/Y/Z plot", open=False):
                    script = _xyz_script()
                with gr.Accordion("ControlNet (ch. 17)", open=False, elem_id="txt2img_controlnet"):
                    panel = controlnet_panel(state)
            with gr.Column():
                output = _output("txt2img")
    tab = Txt2ImgTab(common, script, panel, output)

    def txt2img(v: dict):
        unit = panel.unit(v)
        settings = common.settings(v, controlnet=[unit] if unit else [])
        if v[script.use]:
            return script.run(state, settings, v)
        result = state.run(settings)
        return _gallery(result), _info(result)

    output.button.click(_shown(txt2img), common.components() | script.components() | panel.components(),
                        [output.gallery, output.info])
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
                output = _output("img2img")
    tab = Img2ImgTab(common, init, sketch, upload_init, upload_mask, denoise, mask_blur, mask_mode, area, padding,
                     output)

    def img2img(v: dict):
        result = state.run(tab.settings(v))
        return _gallery(result), _info(result)

    output.button.click(_shown(img2img), tab.components(), [output.gallery, output.info])
    return tab


@dataclass
class PngInfoTab:
    image: gr.Image
    text: gr.Textbox
    send: gr.Button


def _png_info_tab(txt2img: Common, tabs: gr.Tabs) -> PngInfoTab:
    """PNG Info: an image's parameters, and a button that sends them to txt2img's controls."""
    with gr.Tab("PNG Info", id="pnginfo"):
        with gr.Row():
            image = gr.Image(type="pil", label="Source", sources=["upload", "clipboard"])
            with gr.Column():
                text = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_parameters")
                send = gr.Button("Send to txt2img")

    def read_png(picture):
        if picture is None:
            return ""
        return infotext.read(picture)[0] or "this image carries no parameters"

    # txt2img's controls that an infotext fills, with the value each gets when the infotext lacks it
    sent = {txt2img.prompt: ("prompt", ""), txt2img.negative: ("negative_prompt", ""),
            txt2img.sampler: ("sampler_name", "DPM++ 2M"), txt2img.steps: ("steps", 20),
            txt2img.cfg: ("cfg_scale", 4.0), txt2img.seed: ("seed", -1), txt2img.subseed: ("subseed", -1),
            txt2img.strength: ("subseed_strength", 0.0)}

    def send_to_txt2img(parameters: str) -> list:
        given = infotext.to_settings(infotext.parse(parameters))
        return [given.get(name, default) for name, default in sent.values()] + [gr.Tabs(selected="txt2img")]

    image.change(_shown(read_png), [image], [text])
    send.click(_shown(send_to_txt2img), [text], [*sent, tabs])
    return PngInfoTab(image, text, send)


@dataclass
class MergerTab:
    a: gr.Dropdown
    b: gr.Dropdown
    c: gr.Dropdown
    name: gr.Textbox
    multiplier: gr.Slider
    method: gr.Radio
    button: gr.Button
    result: gr.Textbox


def _merger_tab(state: WebUIState, checkpoint: gr.Dropdown) -> MergerTab:
    """Checkpoint Merger: A, B (and C) merged into a new file in the models folder; every model list refreshed."""
    with gr.Tab("Checkpoint Merger", id="merger"):
        titles = state.registry.titles()
        with gr.Row():
            a = gr.Dropdown(titles, value=titles[0], label="Primary model (A)")
            b = gr.Dropdown(titles, value=titles[-1], label="Secondary model (B)")
            c = gr.Dropdown(titles, value=None, label="Tertiary model (C)")
        name = gr.Textbox(label="Custom Name (Optional)")
        multiplier = gr.Slider(0, 1, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A")
        method = gr.Radio(list(merger.METHODS), value="Weighted sum", label="Interpolation Method")
        button = gr.Button("Merge", variant="primary")
        result = gr.Textbox(label="Result", lines=3)
    tab = MergerTab(a, b, c, name, multiplier, method, button, result)

    def run_merge(v: dict):
        registry = state.registry
        if registry.models_dir is None:
            raise ValueError("the app was started without a models folder to write into")
        info, entry = merger.merge(registry.find(v[a]), registry.find(v[b]), registry.find(v[c]) if v[c] else None,
                                   v[method], float(v[multiplier]), registry.models_dir, v[name] or "")
        registry.refresh()
        new = gr.Dropdown(choices=registry.titles())
        return (f"wrote {info.path}: hash {info.hash}\nrecipe: {entry['merge']}", new, new, new,
                gr.Dropdown(choices=registry.titles(), value=registry.current.title))

    button.click(_shown(run_merge), {a, b, c, name, multiplier, method}, [result, a, b, c, checkpoint])
    return tab


def _checkpoint_row(state: WebUIState) -> gr.Dropdown:
    """The checkpoint every tab draws with, and its Refresh button."""
    with gr.Row():
        checkpoint = gr.Dropdown(state.registry.titles(), value=state.registry.current.title,
                                 label=_label("Stable Diffusion checkpoint"), elem_id="sd_model_checkpoint")
        refresh = gr.Button("Refresh", scale=0)

    def choose(title):
        with state.lock:
            state.registry.select(title)
        return gr.Dropdown(value=state.registry.current.title)

    checkpoint.change(_shown(choose), [checkpoint], [checkpoint])
    refresh.click(lambda: gr.Dropdown(choices=[c.title for c in state.registry.refresh()]), [], [checkpoint])
    return checkpoint


def build_blocks(state: WebUIState) -> gr.Blocks:
    """The pages: the checkpoint row above the txt2img, img2img, PNG Info and Checkpoint Merger tabs."""
    with gr.Blocks(title="Stable Diffusion web UI (diffusion_notes)", analytics_enabled=False) as demo:
        checkpoint = _checkpoint_row(state)
        with gr.Tabs() as tabs:
            txt2img = _txt2img_tab(state)
            _img2img_tab(state)
            _png_info_tab(txt2img.common, tabs)
            _merger_tab(state, checkpoint)
    return demo


def create_app(state: WebUIState) -> FastAPI:
    """One FastAPI app: the API under /sdapi/v1 and the Gradio pages at /."""
    app = create_api(state)
    allowed = [str(state.outputs_dir.resolve())] if state.outputs_dir is not None else None
    return gr.mount_gradio_app(app, build_blocks(state), path="/", footer_links=[], run_history=False,
                               ssr_mode=False, mcp_server=False, pwa=False, theme=THEME, css=CSS,
                               allowed_paths=allowed, show_error=True)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 7860) -> None:
    import uvicorn

    print(f"Running on http://{host}:{port} (API: http://{host}:{port}/sdapi/v1/)")
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
