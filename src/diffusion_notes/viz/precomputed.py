"""Slider panels that answer without a kernel.

`precomputed_panel(render, controls)` renders every combination of a few values per control
when the chapter runs, and stores those frames in the cell's output. One output carries two
views of the same panel:

- ``text/html``: the controls and frames with a few lines of JavaScript that show the frame of
  the controls' current values. It loads nothing, so it works on the static website with no
  kernel and no network (the book's ``_config.yml`` ranks this view above widget views).
- the ipywidgets view: the same controls drawn live by the kernel, for any value of a control
  that has a ``live`` range (JupyterLab picks this view, since it has a widget manager).

Every frame is a PNG whose ``parameters`` text chunk names the values it was drawn for (as the
Stable Diffusion web UI stamps its images), so a test, or a curious reader, can check that the
picture shown is the one for the controls' values.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import ipywidgets as widgets
from PIL import Image, PngImagePlugin

from diffusion_notes.viz.panels import _as_png

MAX_FRAMES = 400  # a page of about 3 MB holds a few hundred small frames


class Control(NamedTuple):
    """One control of a panel: the values whose frames the page stores, and how the kernel's widget moves.

    values: the frames' values, in slider order (strings make a dropdown, numbers a slider).
    value:  the starting value, one of `values`.
    live:   for the kernel's widget: (min, max, step) for a slider over any value in that range,
            a sequence of options, a ready ipywidgets widget, or None for `values` only.
    """

    name: str
    values: tuple
    value: Any
    live: Any = None


def control(name: str, values: Sequence, value: Any = None, live: Any = None) -> Control:
    """A `Control`, checked: at least one value, no repeats, and the starting value among them."""
    values = tuple(values)
    if not values:
        raise ValueError(f"control {name!r} needs at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"control {name!r} lists a value twice: {list(values)}")
    value = values[0] if value is None else value
    if value not in values:
        raise ValueError(f"control {name!r}: the starting value {value!r} is not one of {list(values)}")
    if isinstance(live, tuple) and len(live) == 3 and not live[0] <= min(values) <= max(values) <= live[1]:
        raise ValueError(f"control {name!r}: the live range {live[:2]} does not hold the values {list(values)}")
    return Control(name, values, value, live)


def stamp_png(png: bytes, parameters: dict, palette: int | None = None, jpeg: int | None = None) -> bytes:
    """Re-encode a PNG frame with its values stamped in: JSON in a ``parameters`` text chunk (PNG) or comment (JPEG).

    palette: reduce to that many colours (plots with few colours shrink several times; keep None
             for generated images, whose pixels are the result).
    jpeg:    encode as JPEG at this quality instead (noisy photographs: PNG cannot shrink noise).
    """
    image = Image.open(io.BytesIO(png))
    stamp = json.dumps(parameters, sort_keys=True)
    buffer = io.BytesIO()
    if jpeg is not None:
        image.convert("RGB").save(buffer, format="jpeg", quality=jpeg, comment=stamp.encode())
        return buffer.getvalue()
    if palette is not None:
        image = image.convert("RGB").quantize(colors=palette)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", stamp)
    image.save(buffer, format="png", pnginfo=info, optimize=True)
    return buffer.getvalue()


def png_parameters(frame: bytes) -> dict:
    """The values a frame was drawn for, read back from its stamp (PNG text chunk or JPEG comment)."""
    image = Image.open(io.BytesIO(frame))
    return json.loads(image.text["parameters"] if image.format == "PNG" else image.info["comment"])


def _format(frame: bytes) -> str:
    return "jpeg" if frame[:2] == b"\xff\xd8" else "png"


def _data_uri(frame: bytes) -> str:
    return f"data:image/{_format(frame)};base64," + base64.b64encode(frame).decode("ascii")


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _control_html(index: int, c: Control) -> str:
    start = c.values.index(c.value)
    name = html.escape(c.name)
    if len(c.values) == 1:  # fixed on the page (the kernel's widget may still move it)
        return (f'<label class="dn-control"><span>{name}</span> {html.escape(_label(c.value))}'
                f'<input type="hidden" data-control="{index}" value="0"></label>')
    if all(isinstance(v, str) for v in c.values):
        options = "".join(f'<option{" selected" if i == start else ""}>{html.escape(v)}</option>'
                          for i, v in enumerate(c.values))
        field = f'<select data-control="{index}" aria-label="{name}">{options}</select>'
    else:
        field = (f'<input type="range" data-control="{index}" aria-label="{name}" min="0" '
                 f'max="{len(c.values) - 1}" step="1" value="{start}">'
                 f'<output>{html.escape(_label(c.value))}</output>')
    return f'<label class="dn-control"><span>{name}</span> {field}</label>'


_SCRIPT = """<script>(function () {
  var root = document.getElementById("%s");
  var data = JSON.parse(root.querySelector("script.dn-frames").textContent);
  var picture = root.querySelector("img.dn-frame");
  var fields = Array.prototype.slice.call(root.querySelectorAll("[data-control]"));
  function index(field) { return field.tagName === "SELECT" ? field.selectedIndex : Number(field.value); }
  function show() {
    var key = fields.map(index).join("-");
    fields.forEach(function (field, i) {
      var label = field.parentNode.querySelector("output");
      if (label) { label.textContent = data.labels[i][index(field)]; }
      if (field.type === "range") { field.setAttribute("aria-valuetext", data.labels[i][index(field)]); }
    });
    picture.src = data.frames[key];
    picture.setAttribute("data-key", key);
  }
  fields.forEach(function (field) { field.addEventListener("input", show); field.addEventListener("change", show); });
  show();
})();</script>"""


def panel_html(controls: Sequence[Control], frames: dict[tuple, bytes], *, width: str = "360px",
               pixelated: bool = False, uid: str | None = None) -> str:
    """The static view: controls, the starting frame, every frame as a data URI, and the script that swaps them.

    frames: (index of each control's value, ...) -> PNG bytes, one entry per combination.
    """
    uid = uid or f"dn-panel-{uuid.uuid4().hex}"
    start = tuple(c.values.index(c.value) for c in controls)
    data = {"labels": [[_label(v) for v in c.values] for c in controls],
            "frames": {"-".join(map(str, key)): _data_uri(png) for key, png in frames.items()}}
    style = f"width:{width};max-width:100%" + (";image-rendering:pixelated" if pixelated else "")
    fields = "".join(_control_html(i, c) for i, c in enumerate(controls))
    return (f'<div class="dn-panel" id="{uid}">'
            f'<div class="dn-controls" style="display:flex;flex-wrap:wrap;gap:4px 16px">{fields}</div>'
            f'<img class="dn-frame" alt="the picture for the chosen values" style="{style}" '
            f'data-key="{"-".join(map(str, start))}" src="{_data_uri(frames[start])}">'
            f'<script type="application/json" class="dn-frames">{json.dumps(data)}</script>'
            + _SCRIPT % uid + "</div>")


def _live_widget(c: Control) -> widgets.Widget:
    style = {"description_width": "70px"}
    if isinstance(c.live, widgets.Widget):
        return c.live
    numeric = not all(isinstance(v, str) for v in c.values)
    if isinstance(c.live, tuple) and len(c.live) == 3 and numeric:
        lo, hi, step = c.live
        whole = all(isinstance(x, int) for x in (*c.values, lo, hi, step))
        slider = widgets.IntSlider if whole else widgets.FloatSlider
        return slider(value=c.value, min=lo, max=hi, step=step, description=c.name, continuous_update=False,
                      style=style)
    options = list(c.live) if c.live is not None else list(c.values)
    if numeric:
        return widgets.SelectionSlider(options=options, value=c.value, description=c.name,
                                       continuous_update=False, style=style)
    return widgets.Dropdown(options=options, value=c.value, description=c.name, style=style)


class PrecomputedPanel(widgets.VBox):
    """The live panel (a VBox of controls over an Image), whose output also carries the static HTML view."""

    static_html: str = ""
    summary: str = ""

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.summary
        data["text/html"] = self.static_html
        return data


def precomputed_panel(render: Callable[..., Any], controls: Sequence[Control], *, width: str = "360px",
                      dpi: int = 80, palette: int | None = None, jpeg: int | None = None,
                      pixelated: bool = False) -> PrecomputedPanel:
    """A slider panel over `render(**values)`, with every combination of the controls' values stored as a frame.

    render:  keyword arguments named by the controls -> a matplotlib Figure or a PIL image.
    controls: `control(...)`s, shown in this order.
    palette, jpeg: reduce the frames to that many colours, or store them as JPEG at that quality
             (see `stamp_png`; a page of about 3 MB holds a few hundred small frames).
    pixelated: draw the frames with sharp pixels when the page scales them (small generated images).
    Returns the live panel; its `.controls` (name -> widget), `.image`, `.frames` and `.static_html` let a
    chapter or a test inspect it. Display it as the last expression of a cell.
    """
    controls = [c if isinstance(c, Control) else control(*c) for c in controls]
    if not controls:
        raise ValueError("precomputed_panel needs at least one control")
    names = [c.name for c in controls]
    if len(set(names)) != len(names):
        raise ValueError(f"two controls share a name: {names}")
    n_frames = 1
    for c in controls:
        n_frames *= len(c.values)
    if n_frames > MAX_FRAMES:
        raise ValueError(f"{n_frames} frames ({' x '.join(str(len(c.values)) for c in controls)}) is more than "
                         f"{MAX_FRAMES}: offer fewer values per control (the kernel's panel still takes any value)")

    def frame(values: dict) -> bytes:
        return stamp_png(_as_png(render(**values), dpi), values, palette, jpeg)

    frames = {}
    for key in itertools.product(*(range(len(c.values)) for c in controls)):
        frames[key] = frame({c.name: c.values[i] for c, i in zip(controls, key)})

    live = {c.name: _live_widget(c) for c in controls}
    start = tuple(c.values.index(c.value) for c in controls)
    image = widgets.Image(value=frames[start], format=_format(frames[start]), layout=widgets.Layout(width=width))

    def redraw(_change=None):
        values = {name: w.value for name, w in live.items()}
        key = tuple(c.values.index(values[c.name]) if values[c.name] in c.values else None for c in controls)
        image.value = frames[key] if key in frames else frame(values)

    for w in live.values():
        w.observe(redraw, names="value")
    rows = [list(live.values())[i:i + 2] for i in range(0, len(live), 2)]
    panel = PrecomputedPanel([widgets.HBox(row) for row in rows] + [image])
    panel.controls, panel.image, panel.frames = live, image, frames
    panel.static_html = panel_html(controls, frames, width=width, pixelated=pixelated)
    panel.summary = f"precomputed panel: {len(frames)} frames over {' x '.join(names)}"
    return panel
