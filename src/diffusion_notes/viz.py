"""Figures for the book: image grids, denoising-trace animations and slider panels.

Animations are returned as HTML with a JavaScript player (matplotlib's
``to_jshtml``), so they play in JupyterLab and in the rendered website alike,
with no kernel behind them.

A sampler panel has a sampler dropdown, a steps slider, a guidance slider and a seed over one
picture. The panel is built the way nbval and the static website both handle: plain
controls and an `ipywidgets.Image` holding a PNG. The picture for the initial
settings is drawn at once, so the saved page shows it without a kernel; with a
kernel, changing any control re-renders it (on release, `continuous_update=False`).

Every chapter that shows a panel also shows a static companion, a grid or an
animation over the settings a reader would try (`companion_grid`,
`companion_animation`), so the website carries the effect too.

`render(sampler, steps, guidance, seed) -> matplotlib Figure` is the chapter's
drawing function; a control left out of the panel passes its fixed value.
"""

from __future__ import annotations

import io
import re
from typing import Callable, NamedTuple, Sequence

import ipywidgets as widgets
import matplotlib.image as mpimg
import numpy as np
import torch
from IPython.display import HTML
from matplotlib import animation
from matplotlib import pyplot as plt


def to_image(x: torch.Tensor) -> np.ndarray:
    """Turn an image tensor (3, H, W) or (H, W) in [-1, 1] into an array for ``imshow``.

    Returns (H, W, 3) or (H, W) floats in [0, 1]; values outside [-1, 1] are clipped.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    x = x.detach().float().cpu()
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0)  # (H, W, C)
        if x.shape[-1] == 1:
            x = x[..., 0]  # (H, W)
    elif x.ndim != 2:
        raise ValueError(f"expected an image of shape (3, H, W), (1, H, W) or (H, W), got {tuple(x.shape)}")
    return ((x.clamp(-1, 1) + 1) / 2).numpy()


def image_grid(images, nrow: int | None = None, titles=None, scale: float = 1.2, suptitle: str | None = None):
    """Draw a batch of images (B, 3, H, W) in [-1, 1] (or a list of them) as a grid.

    Returns the matplotlib Figure.
    """
    images = list(images)
    if not images:
        raise ValueError("image_grid needs at least one image")
    B = len(images)
    ncol = nrow or min(B, 8)
    nrows = (B + ncol - 1) // ncol
    fig, axes = plt.subplots(nrows, ncol, figsize=(scale * ncol, scale * nrows + (0.3 if titles else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < B:
            ax.imshow(to_image(images[i]), interpolation="nearest", cmap="gray")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int = 80) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it.

    For ``ipywidgets.Image``: a widget that shows a PNG keeps its picture in the
    saved widget state, so the rendered website shows it without a kernel.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# matplotlib's player draws its buttons with Font Awesome, loaded from a CDN; the book's pages load nothing
# from outside, so the buttons get plain Unicode symbols instead (their titles and aria-labels stay).
_FONT_AWESOME_LINK = re.compile(r'<link rel="stylesheet"\s+href="[^"]*font-awesome[^"]*">\n?')
_BUTTON_ICON = re.compile(r'<i class="fa fa-([a-z-]+)( fa-flip-horizontal)?"></i>')
_BUTTON_SYMBOLS = {"minus": "\u2212", "fast-backward": "\u21e4", "step-backward": "\u2039", "play": "\u25b6",
                   "play backwards": "\u25c0", "pause": "\u275a\u275a", "step-forward": "\u203a",
                   "fast-forward": "\u21e5", "plus": "+"}


def offline_player(html: str) -> str:
    """A matplotlib `to_jshtml` player that loads nothing from outside: no Font Awesome, symbols for its icons."""
    html = _FONT_AWESOME_LINK.sub("", html)
    return _BUTTON_ICON.sub(lambda m: _BUTTON_SYMBOLS["play backwards" if m.group(2) else m.group(1)], html)


def _player(fig, update, n_frames: int, interval: int) -> HTML:
    anim = animation.FuncAnimation(fig, update, frames=n_frames, interval=interval, blit=False)
    html = offline_player(anim.to_jshtml(default_mode="once"))
    plt.close(fig)  # the player replaces the static figure
    return HTML(html)


def denoising_animation(frames, titles=None, nrow: int | None = None, interval: int = 120, scale: float = 1.2,
                        dpi: int = 72) -> HTML:
    """Animate a denoising trace of images.

    Args:
        frames: a sequence of batches, each (B, 3, H, W) in [-1, 1]; frame k shows batch k.
        titles: optional one title per frame (e.g. "t = 999").
        dpi: resolution of each frame; frames are stored in the page, so keep it modest.
    Returns:
        an HTML player (play, pause, step, loop) that works in static pages.
    """
    frames = [torch.as_tensor(f) for f in frames]
    if not frames:
        raise ValueError("denoising_animation needs at least one frame")
    B = frames[0].shape[0]
    ncol = nrow or min(B, 8)
    nrows = (B + ncol - 1) // ncol
    fig, axes = plt.subplots(nrows, ncol, figsize=(scale * ncol, scale * nrows + 0.4), squeeze=False, dpi=dpi)
    artists = []
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        artists.append(ax.imshow(to_image(frames[0][i]), interpolation="nearest") if i < B else None)
    title = fig.suptitle(titles[0] if titles else "")

    def update(k):
        for i in range(B):
            artists[i].set_data(to_image(frames[k][i]))
        if titles:
            title.set_text(titles[k])
        return artists[:B]

    return _player(fig, update, len(frames), interval)


def scatter_animation(frames, titles=None, lim: float = 3.5, interval: int = 120, reference=None, size: float = 3.5,
                      dpi: int = 72) -> HTML:
    """Animate 2-D point clouds, one (N, 2) tensor per frame, optionally over ``reference`` points."""
    frames = [torch.as_tensor(f).detach().cpu().numpy() for f in frames]
    if not frames:
        raise ValueError("scatter_animation needs at least one frame")
    fig, ax = plt.subplots(figsize=(size, size), dpi=dpi)
    if reference is not None:
        ref = torch.as_tensor(reference).cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8", label="data")
    points = ax.scatter(frames[0][:, 0], frames[0][:, 1], s=2, c="C0", label="samples")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
    title = ax.set_title(titles[0] if titles else "")

    def update(k):
        points.set_offsets(frames[k])
        if titles:
            title.set_text(titles[k])
        return (points,)

    return _player(fig, update, len(frames), interval)


# ---------------------------------------------------------------------------
# Slider panels.

Render = Callable[[str, int, float, int], "plt.Figure"]


class Setting(NamedTuple):
    sampler: str
    steps: int
    guidance: float = 1.0
    seed: int = 0


def _render_png(render: Render, setting: Setting, dpi: int) -> bytes:
    fig = render(setting.sampler, int(setting.steps), float(setting.guidance), int(setting.seed))
    if hasattr(fig, "save") and hasattr(fig, "mode"):  # a PIL image: no matplotlib, a few ms per update
        buffer = io.BytesIO()
        fig.save(buffer, format="png")
        return buffer.getvalue()
    if not isinstance(fig, plt.Figure):
        raise ValueError(f"render must return a matplotlib Figure or a PIL image, got {type(fig).__name__}")
    return figure_png(fig, dpi=dpi)  # closes the figure


def sampler_panel(
    render: Render,
    samplers: Sequence[str] | None = ("DDIM", "DDPM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras"),
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

    samplers: the dropdown's choices (None: no dropdown, `sampler_value` is passed).
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
        ax.imshow(picture)
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
