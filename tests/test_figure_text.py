"""diffusion_book.figure_text: a figure's PNG records its smallest text, in pixels of the picture."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from diffusion_book import figure_text


def test_the_smallest_visible_text_in_pixels_of_the_picture():
    fig, ax = plt.subplots(dpi=100)
    ax.set_title("title", fontsize=12)
    ax.set_xlabel("x", fontsize=7)
    ax.text(0.5, 0.5, "hidden", fontsize=4).set_visible(False)
    ax.text(0.5, 0.5, "   ", fontsize=3)  # blank: not text a reader sees
    ax.tick_params(labelsize=9)
    assert figure_text.smallest_text_px(fig) == 7 * 100 / 72
    plt.close(fig)


def test_the_inline_png_carries_the_record(tmp_path):
    import IPython.core.pylabtools as pylabtools

    original = pylabtools.print_figure
    try:
        figure_text.install()
        wrapped = pylabtools.print_figure
        figure_text.install()  # a second call wraps nothing more
        assert pylabtools.print_figure is wrapped is not original
        fig, ax = plt.subplots(dpi=100)
        ax.set_title("t", fontsize=7)
        png = pylabtools.print_figure(fig, "png")
        plt.close(fig)
    finally:
        pylabtools.print_figure = original
    path = tmp_path / "figure.png"
    path.write_bytes(png)
    assert abs(figure_text.recorded_px(path) - 7 * 100 / 72) < 0.01
    plain = tmp_path / "plain.png"
    fig, _ = plt.subplots()
    fig.savefig(plain)
    plt.close(fig)
    assert figure_text.recorded_px(plain) is None
