"""Figures of Part II's later chapters (the decoder, unCLIP against GLIDE): picture grids and metric curves.

`image_grid(rows, ...)` lays out rows of pictures with row and column titles (Chapter 7's decodings,
variations and interpolations); `metric_curves(sweep, scales, ...)` draws a benchmark's metrics
against the guidance scale, one line and one shaded interval per model (Chapter 8's sweep).
"""

from __future__ import annotations

import matplotlib.pyplot as plt


def image_grid(rows, row_titles=None, col_titles=None, scale=1.2, suptitle=None):
    """A grid of images: rows is a list of (N, 3, H, W) tensors in [0, 1]; shorter rows leave blanks."""
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(scale * nc + (1.2 if row_titles else 0), scale * nr + 0.3),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(nc):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            else:
                ax.axis("off")
            if col_titles and i == 0:
                ax.set_title(col_titles[j], fontsize=9.5)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=9.5, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    plt.show()


def metric_curves(sweep: dict, scales, titles: dict, intervals: dict, labels=(("glide", "GLIDE"), ("unclip", "unCLIP")),
                  unit_range=("fidelity", "precision"), suptitle="shaded: 95% bootstrap intervals"):
    """One panel per metric: each model's value against the guidance scale, with its interval shaded.

    sweep[model][str(scale)][key] is a value; intervals[model][key] is the list of (lo, hi) per scale
    (so a caller can pass percentile or bias-corrected intervals); titles maps each key to its panel title.
    """
    fig, axes = plt.subplots(1, len(titles), figsize=(3.25 * len(titles), 3.2))
    for ax, (key, title) in zip(axes, titles.items()):
        for name, label in labels:
            values = [sweep[name][str(s)][key] for s in scales]
            lo, hi = zip(*intervals[name][key])
            ax.plot(scales, values, marker="o", ms=4, label=label)
            ax.fill_between(scales, lo, hi, alpha=0.2)
        ax.set_xlabel("decoder guidance scale")
        ax.set_title(title, fontsize=10)
        if key in unit_range:
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=10)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    plt.show()
