"""The pages' shared parts: the output column of a tab (progress, Interrupt, Skip, the seed buttons' source),
the PNG Info and Checkpoint Merger tabs, and "Send to img2img" (`app.py` puts them together).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr

from diffusion_notes.practice.webui import infotext, merger
from diffusion_notes.practice.webui.generate import Result
from diffusion_notes.practice.webui.state import WebUIState


def note(result: Result | None = None, error: Exception | None = None) -> str:
    """The line under the pictures: an error (the last pictures stay), or the job's warnings."""
    if error is not None:
        return f"**Error:** {error}"
    return "\n\n".join(f"**Warning:** {w}" for w in result.warnings) if result and result.warnings else ""


def shown(fn):
    """`fn` for an event: a ValueError or a missing file becomes a message on the page."""
    def call(*values):
        try:
            return fn(*values)
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from None
    return call


def job(state: WebUIState, fn):
    """`fn(v, callback)` for a Generate button: a progress bar as it runs; an error leaves the pictures as they were.

    Returns the gallery, the generation info and the note under them; after an error, only the note.
    """
    def call(v: dict, progress=gr.Progress()):  # noqa: B008 (Gradio finds its progress bar so)
        progress(0, desc="waiting for the jobs before this one" if state.jobs.queue.pending else "starting")

        def callback(i, t, x, x0_hat):
            done, _ = state.jobs.progress.fraction()
            p = state.jobs.progress
            progress(done, desc=f"batch {p.job_no + 1} of {p.job_count}, step {p.sampling_step} of {p.sampling_steps}")

        try:
            return fn(v, callback)
        except (ValueError, FileNotFoundError) as err:
            return gr.skip(), gr.skip(), note(error=err)
    return call


SEED = re.compile(r"(?:^|, )(Seed|Variation seed): (\d+)")


def seed_of(info: str, key: str = "Seed") -> int:
    """The seed an infotext records (the reuse button's value), or -1 if it records none."""
    found = dict(SEED.findall(info or ""))
    return int(found[key]) if key in found else -1


@dataclass
class Output:
    """A tab's Generate, Interrupt and Skip buttons, gallery, generation info and the note under them."""

    button: gr.Button
    gallery: gr.Gallery
    info: gr.Textbox
    note: gr.Markdown
    interrupt: gr.Button
    skip: gr.Button

    def outputs(self) -> list:
        return [self.gallery, self.info, self.note]


def output_column(prefix: str, state: WebUIState, common) -> Output:
    """The output column; Interrupt and Skip act on the running job; the seed buttons (of `common`, an
    app.Common) read the info box."""
    with gr.Row():
        button = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate", scale=2)
        interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", scale=1)
        skip = gr.Button("Skip", elem_id=f"{prefix}_skip", scale=1)
    gallery = gr.Gallery(label="Output", columns=4, elem_id=f"{prefix}_gallery", elem_classes="dn-gallery",
                         type="pil")
    info = gr.Textbox(label="Generation info", lines=4, elem_id=f"{prefix}_info")
    note = gr.Markdown(elem_id=f"{prefix}_note")
    interrupt.click(state.jobs.progress.interrupt, [], [], queue=False)
    skip.click(state.jobs.progress.skip, [], [], queue=False)
    for key, reuse in common.reuse.items():
        reuse.click(lambda text, key=key: seed_of(text, key), [info], [common.seed if key == "Seed" else
                                                                     common.subseed], queue=False)
    return Output(button, gallery, info, note, interrupt, skip)


@dataclass
class PngInfoTab:
    image: gr.Image
    text: gr.Textbox
    send: gr.Button
    send_img2img: gr.Button


def png_info_tab(txt2img, tabs: gr.Tabs) -> PngInfoTab:
    """PNG Info: an image's parameters, and buttons that send them to txt2img's controls (`txt2img`: an app.Common)
    or to img2img's."""
    with gr.Tab("PNG Info", id="pnginfo"):
        with gr.Row():
            image = gr.Image(type="pil", label="Source", sources=["upload", "clipboard"], elem_classes="dn-input")
            with gr.Column():
                text = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_parameters")
                with gr.Row():
                    send = gr.Button("Send to txt2img")
                    send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")

    def read_png(picture):
        if picture is None:
            return ""
        return infotext.read(picture)[0] or "this image carries no parameters"

    def send_to_txt2img(parameters: str) -> list:
        return txt2img.paste(parameters) + [gr.Tabs(selected="txt2img")]

    image.change(shown(read_png), [image], [text])
    send.click(shown(send_to_txt2img), [text], [*txt2img.pasted(), tabs])
    return PngInfoTab(image, text, send, send_img2img)


def send_to_img2img(buttons: list, img2img, tabs: gr.Tabs) -> None:
    """Each (button, image or gallery, parameters box): the picture to img2img's image, its parameters to its
    controls (`img2img`: app.Img2ImgTab)."""
    def send(picture, parameters: str) -> list:
        if isinstance(picture, list):  # a gallery: its first picture (image, caption)
            picture = (picture[0][0] if isinstance(picture[0], (tuple, list)) else picture[0]) if picture else None
        if picture is None:
            raise ValueError("there is no picture to send")
        return [picture, *img2img.common.paste(parameters), gr.Tabs(selected="img2img")]

    for button, picture, parameters in buttons:
        button.click(shown(send), [picture, parameters], [img2img.init, *img2img.common.pasted(), tabs])


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
    refresh: gr.Button


def merger_tab(state: WebUIState, checkpoint: gr.Dropdown) -> MergerTab:
    """Checkpoint Merger: A, B (and C) merged into a new file in the models folder; every model list refreshed."""
    with gr.Tab("Checkpoint Merger", id="merger"):
        titles = state.registry.titles()
        with gr.Row():
            a = gr.Dropdown(titles, value=titles[0], label="Primary model (A)")
            b = gr.Dropdown(titles, value=titles[-1], label="Secondary model (B)")
            c = gr.Dropdown(titles, value=None, label="Tertiary model (C)")
            refresh = gr.Button("Refresh", scale=0, elem_id="merger_refresh")
        name = gr.Textbox(label="Custom Name (Optional)")
        multiplier = gr.Slider(0, 1, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A")
        method = gr.Radio(list(merger.METHODS), value="Weighted sum", label="Interpolation Method")
        button = gr.Button("Merge", variant="primary")
        result = gr.Textbox(label="Result", lines=3)
    tab = MergerTab(a, b, c, name, multiplier, method, button, result, refresh)

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

    button.click(shown(run_merge), {a, b, c, name, multiplier, method}, [result, a, b, c, checkpoint])
    return tab
