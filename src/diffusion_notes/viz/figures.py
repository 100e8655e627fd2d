"""Figures: image grids, PNG bytes, and denoising-trace animations.

Animations are returned as HTML with a JavaScript player (matplotlib's ``to_jshtml``,
with its buttons drawn in Unicode so nothing is loaded from outside), so they play in
JupyterLab and in the rendered website alike, with no kernel behind them.
"""

from __future__ import annotations

import io
import re

import numpy as np
import torch
from IPython.display import HTML
from matplotlib import animation
from matplotlib import pyplot as plt
from PIL import Image


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
                ax.set_title(titles[i], fontsize=9.5)
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


def pil_row(images, scale: int = 3, gap: int = 4):
    """PIL images of one size side by side, enlarged `scale` times with sharp pixels: one PIL image.

    A white gutter of `gap` pixels separates neighbours, so that dark pictures do not run together.
    """
    images = list(images)
    if not images:
        raise ValueError("pil_row needs at least one image")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    w, h = images[0].size
    W, H = w * scale, h * scale
    out = Image.new("RGB", (W * len(images) + gap * (len(images) - 1), H), "white")
    for i, image in enumerate(images):
        out.paste(image.convert("RGB").resize((W, H), Image.NEAREST), ((W + gap) * i, 0))
    return out


def show_row(images, title: str, scale: int = 3):
    """Show PIL images side by side (`pil_row`) under `title`, as one figure."""
    plt.figure(figsize=(len(images) * 0.32 * scale, 0.4 * scale))
    plt.imshow(pil_row(images, scale))
    plt.axis("off")
    plt.title(title, fontsize=8)
    plt.show()


def show_jpeg(fig, quality: int = 85, dpi: int = 100):
    """Show a figure as a JPEG and close it: for figures of noisy pictures, which PNG cannot compress
    (a page's weight)."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=dpi, bbox_inches="tight", pil_kwargs={"quality": quality})
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="jpeg"))


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


def _player(fig, update, n_frames: int, interval: int, frame_format: str = "png") -> HTML:
    if frame_format not in ("png", "jpeg"):
        raise ValueError(f"frame_format must be 'png' or 'jpeg', got {frame_format!r}")
    anim = animation.FuncAnimation(fig, update, frames=n_frames, interval=interval, blit=False)
    with plt.rc_context({"animation.frame_format": frame_format}):
        html = offline_player(anim.to_jshtml(default_mode="once"))
    plt.close(fig)  # the player replaces the static figure
    return HTML(html)


def denoising_animation(frames, titles=None, nrow: int | None = None, interval: int = 120, scale: float = 1.2,
                        dpi: int = 72, frame_format: str = "png") -> HTML:
    """Animate a denoising trace of images.

    Args:
        frames: a sequence of batches, each (B, 3, H, W) in [-1, 1]; frame k shows batch k.
        titles: optional one title per frame (e.g. "t = 999").
        dpi: resolution of each frame; frames are stored in the page, so keep it modest.
        frame_format: "png", or "jpeg" for noisy frames (several times smaller; PNG cannot compress noise).
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

    return _player(fig, update, len(frames), interval, frame_format)


def scatter_animation(frames, titles=None, lim: float = 3.5, interval: int = 120, reference=None, size: float = 3.5,
                      dpi: int = 72, frame_format: str = "png") -> HTML:
    """Animate 2-D point clouds, one (N, 2) tensor per frame, optionally over ``reference`` points.

    frame_format "jpeg" makes the page several times lighter for clouds of many points."""
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

    return _player(fig, update, len(frames), interval, frame_format)
