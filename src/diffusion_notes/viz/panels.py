"""Slider panels with a kernel behind them, and their static companions.

A sampler panel has a sampler dropdown, a steps slider, a guidance slider and a seed over one
picture: plain controls and an `ipywidgets.Image` holding a PNG. The picture for the initial
settings is drawn at once; with a kernel, changing any control re-renders it (on release,
`continuous_update=False`). `precomputed.precomputed_panel` wraps the same live controls
with frames stored in the page, so the sliders also answer on the static website.

`render(sampler, steps, guidance, seed) -> matplotlib Figure` (or a PIL image) is the chapter's
drawing function; a control left out of the panel passes its fixed value. `companion_grid`
and `companion_animation` draw it for several settings side by side, or as a player.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import NamedTuple

import ipywidgets as widgets
import matplotlib.image as mpimg
from matplotlib import pyplot as plt

from diffusion_notes.viz.figures import _player, figure_png

Render = Callable[[str, int, float, int], "plt.Figure"]


class Setting(NamedTuple):
    sampler: str
    steps: int
    guidance: float = 1.0
    seed: int = 0


def _as_png(picture, dpi: int) -> bytes:
    """A matplotlib Figure (closed after) or a PIL image as PNG bytes."""
    if hasattr(picture, "save") and hasattr(picture, "mode"):  # a PIL image: no matplotlib, a few ms per update
        buffer = io.BytesIO()
        picture.save(buffer, format="png")
        return buffer.getvalue()
    if not isinstance(picture, plt.Figure):
        raise ValueError(f"render must return a matplotlib Figure or a PIL image, got {type(picture).__name__}")
    return figure_png(picture, dpi=dpi)  # closes the figure


def _render_png(render: Render, setting: Setting, dpi: int) -> bytes:
    return _as_png(render(setting.sampler, int(setting.steps), float(setting.guidance), int(setting.seed)), dpi)


def sampler_panel(
    render: Render,
    samplers: Sequence[str] | None = None,
    steps: Sequence[int] | None = (5, 10, 20, 50, 100, 250, 1000),
    guidance: tuple[float, float, float] | None = None,
    seed: int | None = 0,
    *,
    sampler_value: str | None = None,
    steps_value: int | None = None,
    guidance_value: float = 1.0,
    width: str = "360px",
    dpi: int = 80,
    extra_controls: dict[str, widgets.Widget] | None = None,
) -> widgets.VBox:
    """A panel of controls over the picture `render` draws for their current values.

    samplers: the dropdown's choices, e.g. `list(foundations.samplers.SAMPLER_ALIASES)`, every
              registered sampler's web-UI name (None, the default: no dropdown, `sampler_value` is passed).
    steps:    the step counts the slider offers (None: no slider, `steps_value` is passed).
    guidance: (min, max, step) of a guidance-scale slider starting at `guidance_value`
              (None: no slider, `guidance_value` is passed).
    seed:     the seed box's starting value (None: no box, seed 0 is passed).
    extra_controls: more widgets (e.g. a prompt box) shown first; `render` reads their
              values itself, and changing one redraws the picture.
    Returns a VBox; display it as the last expression of a cell. Its `.controls`
    (a dict name -> widget) and `.image` attributes let a chapter or a test drive it.
    """
    if samplers is not None and not list(samplers):
        raise ValueError("samplers must name at least one sampler, or be None for no dropdown")
    if steps is not None and not list(steps):
        raise ValueError("steps must list at least one step count, or be None for no slider")
    sampler_value = sampler_value if sampler_value is not None else (list(samplers)[0] if samplers else None)
    steps_value = steps_value if steps_value is not None else (list(steps)[0] if steps else None)
    if sampler_value is None or steps_value is None:
        raise ValueError("without a sampler dropdown or steps slider, pass sampler_value and steps_value")
    if samplers is not None and sampler_value not in samplers:
        raise ValueError(f"sampler_value {sampler_value!r} is not one of the samplers {list(samplers)}")
    if steps is not None and steps_value not in steps:
        raise ValueError(f"steps_value {steps_value!r} is not one of the step counts {list(steps)}")

    controls: dict[str, widgets.Widget] = dict(extra_controls or {})
    style = {"description_width": "70px"}
    if samplers is not None:
        controls["sampler"] = widgets.Dropdown(options=list(samplers), value=sampler_value,
                                               description="sampler", style=style)
    if steps is not None:
        controls["steps"] = widgets.SelectionSlider(options=[int(n) for n in steps], value=int(steps_value),
                                                    description="steps", continuous_update=False, style=style)
    if guidance is not None:
        lo, hi, step = guidance
        if not lo <= guidance_value <= hi:
            raise ValueError(f"guidance_value {guidance_value} is outside the slider's range [{lo}, {hi}]")
        controls["guidance"] = widgets.FloatSlider(value=guidance_value, min=lo, max=hi, step=step,
                                                   description="guidance", continuous_update=False, style=style)
    if seed is not None:
        controls["seed"] = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed", style=style)

    def current() -> Setting:
        get = lambda name, fixed: controls[name].value if name in controls else fixed  # noqa: E731
        return Setting(get("sampler", sampler_value), get("steps", steps_value),
                       get("guidance", guidance_value), get("seed", 0))

    image = widgets.Image(value=_render_png(render, current(), dpi), format="png", layout=widgets.Layout(width=width))

    def redraw(_change=None):
        image.value = _render_png(render, current(), dpi)

    for control in controls.values():
        control.observe(redraw, names="value")
    rows = [list(extra_controls.values())] if extra_controls else []
    standard = [c for name, c in controls.items() if not extra_controls or name not in extra_controls]
    rows += [standard[:2], standard[2:]]
    panel = widgets.VBox([widgets.HBox(row) for row in rows if row] + [image])
    panel.controls, panel.image = controls, image
    return panel


def _png_array(png: bytes):
    return mpimg.imread(io.BytesIO(png), format="png")  # (H, W, 4) floats


def companion_grid(render: Render, settings: Sequence[Setting], ncols: int | None = None,
                   scale: float = 2.6, dpi: int = 80):
    """The static companion of a panel: `render`'s pictures for several settings, side by side.

    Each setting is a `Setting(sampler, steps, guidance, seed)` (or a 4-tuple).
    Returns a matplotlib Figure (show it, or let the cell display it).
    """
    settings = [Setting(*s) for s in settings]
    if not settings:
        raise ValueError("companion_grid needs at least one setting")
    pictures = [_png_array(_render_png(render, s, dpi)) for s in settings]
    ncols = ncols or min(len(settings), 4)
    nrows = (len(settings) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, picture in zip(axes.flat, pictures):
        ax.imshow(picture, interpolation="nearest")  # small generated images keep their pixels
    fig.tight_layout(pad=0.2)
    return fig


def companion_animation(render: Render, settings: Sequence[Setting], interval: int = 700,
                        size: float = 3.5, dpi: int = 72):
    """The static companion as a player: one frame per setting (HTML that plays without a kernel)."""
    settings = [Setting(*s) for s in settings]
    if not settings:
        raise ValueError("companion_animation needs at least one setting")
    pictures = [_png_array(_render_png(render, s, dpi)) for s in settings]
    height, width = pictures[0].shape[:2]
    fig, ax = plt.subplots(figsize=(size, size * height / width), dpi=dpi)
    ax.axis("off")
    shown = ax.imshow(pictures[0])
    fig.tight_layout(pad=0)

    def update(k):
        shown.set_data(pictures[k])
        return (shown,)

    return _player(fig, update, len(pictures), interval)
