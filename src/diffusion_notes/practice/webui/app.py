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

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from PIL import Image  # noqa: E402

from diffusion_notes.practice.controlnet.units import unit_from_panel  # noqa: E402
from diffusion_notes.practice.webui import infotext, merger, xyz  # noqa: E402
from diffusion_notes.practice.webui.api import create_api  # noqa: E402
from diffusion_notes.practice.webui.generate import LIMITS, SAMPLER_ALIASES, Settings  # noqa: E402
from diffusion_notes.practice.webui.state import WebUIState  # noqa: E402

THEME = gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
CSS = ".dn-gallery img, .dn-input img {image-rendering: pixelated}"
# Each control and the chapter that explains it.
CHAPTERS = {"Sampling method": 2, "Sampling steps": 2, "CFG Scale": 3, "Prompt": 12, "Seed": 1,
            "Denoising strength": 13, "Stable Diffusion checkpoint": 11}


def _label(name: str) -> str:
    return f"{name} (ch. {CHAPTERS[name]})" if name in CHAPTERS else name


def _settings(prompt, negative, sampler, steps, cfg, seed, subseed, strength, batch_count, batch_size, **extra):
    return Settings(prompt=prompt or "", negative_prompt=negative or "", sampler_name=sampler, steps=int(steps),
                    cfg_scale=float(cfg), seed=int(seed), subseed=int(subseed), subseed_strength=float(strength),
                    n_iter=int(batch_count), batch_size=int(batch_size), **extra)


def _gallery(result):
    paths = getattr(result, "paths", None)
    return [(str(p) if paths else im, None) for p, im in zip(paths or result.images, result.images)]


def _info(result) -> str:
    return "\n\n".join([result.infotexts[0], *result.warnings])


def controlnet_panel(state: WebUIState) -> list:
    """The ControlNet unit's controls: enable, an uploaded or drawn condition (white on black), model, weight, window."""
    enabled = gr.Checkbox(False, label="Enable", elem_id="controlnet_enable")
    with gr.Tabs():
        with gr.Tab("Upload"):
            upload = gr.Image(type="pil", label="Condition image (32x32, white on black)", image_mode="RGB",
                              elem_classes="dn-input")
        with gr.Tab("Draw"):
            drawing = gr.ImageEditor(type="pil", label="Draw the outline", canvas_size=(256, 256),
                                     value={"background": Image.new("RGB", (256, 256)), "layers": [], "composite": None},
                                     brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=8))
    names = sorted(state.controlnets)
    model = gr.Dropdown(names, value=names[0] if names else None, label="Model", elem_id="controlnet_model")
    weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight")
    with gr.Row():
        start = gr.Slider(0, 1, value=0.0, step=0.01, label="Starting Control Step")
        end = gr.Slider(0, 1, value=1.0, step=0.01, label="Ending Control Step")
    return [enabled, upload, drawing, model, weight, start, end]


def build_blocks(state: WebUIState) -> gr.Blocks:
    def call(fn, *args):
        try:
            return fn(*args)
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from None

    with gr.Blocks(title="Stable Diffusion web UI (diffusion_notes)", analytics_enabled=False) as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(state.registry.titles(), value=state.registry.current.title,
                                     label=_label("Stable Diffusion checkpoint"), elem_id="sd_model_checkpoint")
            refresh = gr.Button("Refresh", scale=0)

        def common(prefix):
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
            return [prompt, negative, sampler, steps, cfg, seed, subseed, strength, batch_count, batch_size]

        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                with gr.Row():
                    with gr.Column():
                        t2i = common("txt2img")
                        with gr.Accordion("Script: X/Y/Z plot", open=False):
                            axes = []
                            for axis, default in (("X", "CFG Scale"), ("Y", "Nothing"), ("Z", "Nothing")):
                                with gr.Row():
                                    axes.append(gr.Dropdown(list(xyz.AXES), value=default, label=f"{axis} type"))
                                    axes.append(gr.Textbox(label=f"{axis} values", placeholder="1, 4, 7"))
                            use_xyz = gr.Checkbox(False, label="Use the X/Y/Z plot")
                        with gr.Accordion("ControlNet (ch. 17)", open=False, elem_id="txt2img_controlnet"):
                            cn_inputs = controlnet_panel(state)
                    with gr.Column():
                        t2i_button = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                        t2i_gallery = gr.Gallery(label="Output", columns=4, elem_id="txt2img_gallery",
                                                 elem_classes="dn-gallery")
                        t2i_info = gr.Textbox(label="Generation info", lines=4, elem_id="txt2img_info")

            def txt2img(*values):
                values, unit = values[:17], unit_from_panel(*values[17:])
                settings = _settings(*values[:10], controlnet=[unit] if unit else [])
                if values[-1]:
                    plot = xyz.run(lambda s: state.run(s), settings, *values[10:16])
                    return [(plot.grid, "X/Y/Z plot")] + [(im, None) for im in plot.images], plot.describe()
                result = state.run(settings)
                return _gallery(result), _info(result)

            t2i_button.click(lambda *v: call(txt2img, *v), t2i + axes + [use_xyz] + cn_inputs,
                             [t2i_gallery, t2i_info])

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
                                    upload_mask = gr.Image(type="pil", label="Mask (white = redraw)",
                                                           image_mode="L", elem_classes="dn-input")
                        i2i = common("img2img")
                        denoise = gr.Slider(0, 1, value=0.75, step=0.01, label=_label("Denoising strength"))
                        with gr.Row():
                            mask_blur = gr.Slider(*LIMITS["mask_blur"], value=0, step=1, label="Mask blur")
                            mask_mode = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
                                                 label="Mask mode")
                        with gr.Row():
                            area = gr.Radio(["Whole picture", "Only masked"], value="Whole picture",
                                            label="Inpaint area")
                            padding = gr.Slider(*LIMITS["inpaint_full_res_padding"], value=4, step=1,
                                                label="Only masked padding, pixels")
                    with gr.Column():
                        i2i_button = gr.Button("Generate", variant="primary", elem_id="img2img_generate")
                        i2i_gallery = gr.Gallery(label="Output", columns=4, elem_classes="dn-gallery")
                        i2i_info = gr.Textbox(label="Generation info", lines=4)

            def img2img(image, editor, up_image, up_mask, *values):
                values, (denoise_v, blur, mode, area_v, pad) = values[:10], values[10:]
                mask = None
                if editor is not None and editor.get("background") is not None:
                    image = editor["background"]
                    layer = next((im for im in editor.get("layers") or [] if im is not None), None)
                    if layer is not None and layer.convert("RGBA").getchannel("A").getbbox():
                        mask = layer.convert("RGBA").getchannel("A").point(lambda v: 255 if v else 0)
                if up_image is not None:
                    image, mask = up_image, up_mask
                if image is None:
                    raise ValueError("give an image to start from")
                settings = _settings(*values, init_image=image, mask=mask, denoising_strength=float(denoise_v),
                                     mask_blur=int(blur), inpainting_mask_invert=mode == "Inpaint not masked",
                                     inpaint_full_res=area_v == "Only masked", inpaint_full_res_padding=int(pad))
                result = state.run(settings)
                return _gallery(result), _info(result)

            i2i_button.click(lambda *v: call(img2img, *v),
                             [init, sketch, upload_init, upload_mask] + i2i + [denoise, mask_blur, mask_mode, area,
                                                                             padding], [i2i_gallery, i2i_info])

            with gr.Tab("PNG Info", id="pnginfo"):
                with gr.Row():
                    png = gr.Image(type="pil", label="Source", sources=["upload", "clipboard"])
                    with gr.Column():
                        png_text = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_parameters")
                        send = gr.Button("Send to txt2img")

            def read_png(image):
                if image is None:
                    return ""
                text, items = infotext.read(image)
                return text or "this image carries no parameters"

            png.change(lambda im: call(read_png, im), [png], [png_text])

            def send_to_txt2img(text):
                fields = infotext.to_settings(infotext.parse(text))
                return [fields.get("prompt", ""), fields.get("negative_prompt", ""),
                        fields.get("sampler_name", "DPM++ 2M"), fields.get("steps", 20), fields.get("cfg_scale", 4.0),
                        fields.get("seed", -1), fields.get("subseed", -1), fields.get("subseed_strength", 0.0),
                        gr.Tabs(selected="txt2img")]

            with gr.Tab("Checkpoint Merger", id="merger"):
                titles = state.registry.titles()
                with gr.Row():
                    model_a = gr.Dropdown(titles, value=titles[0], label="Primary model (A)")
                    model_b = gr.Dropdown(titles, value=titles[-1], label="Secondary model (B)")
                    model_c = gr.Dropdown(titles, value=None, label="Tertiary model (C)")
                merge_name = gr.Textbox(label="Custom Name (Optional)")
                multiplier = gr.Slider(0, 1, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A")
                method = gr.Radio(list(merger.METHODS), value="Weighted sum", label="Interpolation Method")
                merge_button = gr.Button("Merge", variant="primary")
                merge_result = gr.Textbox(label="Result", lines=3)

        def run_merge(a, b, c, name, m, how):
            if state.registry.models_dir is None:
                raise ValueError("the app was started without a models folder to write into")
            find = state.registry.find
            info, entry = merger.merge(find(a), find(b), find(c) if c else None, how, float(m),
                                       state.registry.models_dir, name or "")
            state.registry.refresh()
            new = gr.Dropdown(choices=state.registry.titles())
            return (f"wrote {info.path}: hash {info.hash}\nrecipe: {entry['merge']}", new, new, new,
                    gr.Dropdown(choices=state.registry.titles(), value=state.registry.current.title))

        merge_button.click(lambda *v: call(run_merge, *v), [model_a, model_b, model_c, merge_name, multiplier, method],
                           [merge_result, model_a, model_b, model_c, checkpoint])
        send.click(lambda t: call(send_to_txt2img, t), [png_text], t2i[:8] + [tabs])

        def choose(title):
            with state.lock:
                state.registry.select(title)
            return gr.Dropdown(value=state.registry.current.title)

        checkpoint.change(lambda t: call(choose, t), [checkpoint], [checkpoint])
        refresh.click(lambda: gr.Dropdown(choices=[c.title for c in state.registry.refresh()]), [], [checkpoint])
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
