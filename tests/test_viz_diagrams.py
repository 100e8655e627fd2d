"""viz's diagram boxes and arrows, and its rows of pictures."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from PIL import Image

from diffusion_notes import viz


def test_a_box_is_a_patch_with_its_text_in_the_middle_and_an_arrow_has_its_label():
    fig, ax = plt.subplots()
    viz.box(ax, 1.0, 2.0, 4.0, 1.0, "encoder", "#dde8f7")
    viz.box(ax, 0.0, 0.0, 1.0, 1.0, "plain", "#ffffff", rounded=False)
    viz.arrow(ax, (0.0, 0.0), (2.0, 0.0), "z_t", ls="--")
    rounded, plain, arrow = ax.patches
    assert isinstance(rounded, FancyBboxPatch) and isinstance(plain, Rectangle) and isinstance(arrow, FancyArrowPatch)
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    assert texts["encoder"] == (3.0, 2.5) and texts["plain"] == (0.5, 0.5)
    assert texts["z_t"] == pytest.approx((1.0, 0.05)) and arrow.get_linestyle() == "--"
    plt.close(fig)


def test_a_row_puts_pictures_side_by_side_with_sharp_pixels():
    a = Image.fromarray(np.full((2, 2, 3), 10, np.uint8))
    b = Image.fromarray(np.full((2, 2, 3), 200, np.uint8))
    row = np.asarray(viz.pil_row([a, b], scale=3, gap=0))
    assert row.shape == (6, 12, 3)
    assert (row[:, :6] == 10).all() and (row[:, 6:] == 200).all()  # nearest: no blend at the seam
    row = np.asarray(viz.pil_row([a, b], scale=3))  # a white gutter of 4 pixels between them
    assert row.shape == (6, 16, 3)
    assert (row[:, :6] == 10).all() and (row[:, 6:10] == 255).all() and (row[:, 10:] == 200).all()
    with pytest.raises(ValueError, match="at least one image"):
        viz.pil_row([])
