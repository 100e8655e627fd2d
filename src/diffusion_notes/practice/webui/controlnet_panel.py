"""The web UI's ControlNet panel (ch. 17): its controls on the txt2img tab, and the ControlUnit their values make.

`unit_from_panel` needs no Gradio, so it can be read and tested without a page; `controlnet_panel`
builds the controls inside the pages' Blocks (`app.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from PIL import Image

from diffusion_notes.practice.controlnet.units import ControlUnit

if TYPE_CHECKING:
    import gradio as gr


def unit_from_panel(enabled: bool, upload, drawing, model: str, weight, start, end) -> ControlUnit | None:
    """The web UI panel's values -> a ControlUnit, or None when the panel is off.

    The condition is the uploaded image, else the drawing (an image editor's background and layers,
    flattened onto black); either is resized to 32x32, as the extension resizes to the model's size.
    """
    if not enabled:
        return None
    image = upload
    if image is None and isinstance(drawing, dict):
        image = drawing.get("composite")
        if image is None and drawing.get("background") is not None:
            image = drawing["background"]
    if image is None:
        raise ValueError("the ControlNet panel is on but has no condition image: upload one or draw one")
    flat = Image.new("RGB", image.size, (0, 0, 0))
    rgba = image.convert("RGBA")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    if flat.size != (32, 32):
        flat = flat.resize((32, 32), Image.BILINEAR)
    return ControlUnit(flat, model, float(weight), float(start), float(end))


@dataclass
class ControlNetPanel:
    """The unit's controls, in `unit_from_panel`'s order.

    Enable, an uploaded or drawn condition, model, weight, window.
    """

    enabled: gr.Checkbox
    upload: gr.Image
    drawing: gr.ImageEditor
    model: gr.Dropdown
    weight: gr.Slider
    start: gr.Slider
    end: gr.Slider

    def components(self) -> set:
        return {getattr(self, f.name) for f in fields(self)}

    def unit(self, v: dict) -> ControlUnit | None:
        return unit_from_panel(*(v[getattr(self, f.name)] for f in fields(self)))


def controlnet_panel(state) -> ControlNetPanel:
    """The panel's controls, inside the Blocks being built; the condition is drawn or uploaded white on black."""
    import gradio as gr  # the web UI's pages import it (app.py); the unit above needs no Gradio

    enabled = gr.Checkbox(False, label="Enable", elem_id="controlnet_enable")
    with gr.Tabs():
        with gr.Tab("Upload"):
            upload = gr.Image(type="pil", label="Condition image (32x32, white on black)", image_mode="RGB",
                              elem_classes="dn-input")
        with gr.Tab("Draw"):
            drawing = gr.ImageEditor(type="pil", label="Draw the outline", canvas_size=(256, 256),
                                     value={"background": Image.new("RGB", (256, 256)), "layers": [],
                                            "composite": None},
                                     brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=8))
    names = sorted(state.controlnets)
    model = gr.Dropdown(names, value=names[0] if names else None, label="Model", elem_id="controlnet_model")
    weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight")
    with gr.Row():
        start = gr.Slider(0, 1, value=0.0, step=0.01, label="Starting Control Step")
        end = gr.Slider(0, 1, value=1.0, step=0.01, label="Ending Control Step")
    return ControlNetPanel(enabled, upload, drawing, model, weight, start, end)
