"""Block diagrams drawn with matplotlib: boxes with text and the arrows between them.

    fig, ax = plt.subplots(figsize=(10, 3))
    box(ax, 0.1, 1.0, 1.4, 0.6, "CLIP text encoder", "#dde8f7")
    arrow(ax, (1.5, 1.3), (2.2, 1.3), "z_t (64)")

Chapters 5 and 7 draw unCLIP's and the decoder's data flow with them.
"""

from __future__ import annotations

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle


def box(ax, x, y, w, h, text: str, colour: str, rounded: bool = True, fontsize: float = 7.5):
    """A w x h box at (x, y) (its lower left corner), filled with `colour`, `text` in its middle."""
    patch = (FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=colour, ec="black", lw=0.8) if rounded
             else Rectangle((x, y), w, h, fc=colour, ec="black", lw=0.8))
    ax.add_patch(patch)
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, a, b, label: str = "", **style):
    """An arrow from point a to point b, `label` above its middle; `style` goes to FancyArrowPatch."""
    ax.add_patch(FancyArrowPatch(a, b, **{"arrowstyle": "-|>", "mutation_scale": 10, "lw": 0.9, **style}))
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.05, label, ha="center", va="bottom", fontsize=6.5)
