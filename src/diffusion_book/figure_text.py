"""How small a figure's text is: every chapter figure records its smallest text in its own PNG.

A figure is drawn at `fig.dpi` pixels per inch, so text of `s` points is `s * dpi / 72` pixels of
the picture; on the page the picture is then scaled to fit the column. `install()` (run in each
kernel that executes a chapter, from the IPython startup file `make execute` writes) makes the
notebook's PNG of every matplotlib figure carry a text chunk, "Smallest text px", with the smallest
visible text of the figure in pixels of the picture. tests/browser/test_figures.py reads the chunk
from the built site's image and multiplies it by the scale the page shows the picture at.
"""

from __future__ import annotations

KEY = "Smallest text px"


def smallest_text_px(fig) -> float | None:
    """The smallest font size among the figure's visible, non-empty texts, in pixels of the picture."""
    from matplotlib.text import Text

    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * fig.dpi / 72 if sizes else None


def install() -> None:
    """Make IPython's PNG of a figure carry `KEY`: wraps `IPython.core.pylabtools.print_figure`.

    The inline backend builds its PNG formatter from that function when it is activated (at the
    first `import matplotlib.pyplot`), so the wrapper is in place for every figure after this runs.
    """
    import IPython.core.pylabtools as pylabtools

    original = pylabtools.print_figure
    if getattr(original, "records_text_size", False):
        return

    def print_figure(fig, fmt="png", bbox_inches="tight", base64=False, **kwargs):
        if fmt in ("png", "retina") and "metadata" not in kwargs:
            px = smallest_text_px(fig)
            if px is not None:
                kwargs["metadata"] = {KEY: f"{px:.2f}"}
        return original(fig, fmt, bbox_inches, base64, **kwargs)

    print_figure.records_text_size = True
    pylabtools.print_figure = print_figure


def recorded_px(png_path) -> float | None:
    """The smallest text a PNG recorded, in its own pixels (None if it records none)."""
    from PIL import Image

    with Image.open(png_path) as image:
        value = getattr(image, "text", {}).get(KEY)
    return float(value) if value is not None else None
