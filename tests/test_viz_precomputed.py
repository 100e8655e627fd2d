"""Precomputed panels: a frame per combination, each stamped with its values; a static view; a live view."""

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib import pyplot as plt
from PIL import Image

from diffusion_notes import viz


def _render(calls):
    def render(sampler, steps, guidance):
        calls.append((sampler, steps, guidance))
        fig, ax = plt.subplots(figsize=(1.5, 1.5))
        ax.plot([0, steps], [0, guidance])
        ax.set_title(sampler)
        return fig

    return render


CONTROLS = [viz.control("sampler", ["DDIM", "Euler a"]),
            viz.control("steps", [5, 20], value=20),
            viz.control("guidance", [1.0, 3.0, 7.5], value=3.0, live=(0.0, 10.0, 0.5))]


def _static_frames(panel):
    """The frames the static view holds, decoded: key -> PNG bytes."""
    blob = re.search(r'<script type="application/json" class="dn-frames">(.*?)</script>', panel.static_html).group(1)
    data = json.loads(blob)
    return data, {k: base64.b64decode(uri.split(",", 1)[1]) for k, uri in data["frames"].items()}


def test_every_combination_is_rendered_once_and_stamped_with_its_values():
    calls = []
    panel = viz.precomputed_panel(_render(calls), CONTROLS)
    assert sorted(calls) == sorted((s, n, g) for s in ("DDIM", "Euler a") for n in (5, 20) for g in (1.0, 3.0, 7.5))
    data, frames = _static_frames(panel)
    assert len(frames) == 12 and data["labels"] == [["DDIM", "Euler a"], ["5", "20"], ["1", "3", "7.5"]]
    for key, png in frames.items():
        i, j, k = map(int, key.split("-"))
        expected = {"sampler": CONTROLS[0].values[i], "steps": CONTROLS[1].values[j],
                    "guidance": CONTROLS[2].values[k]}
        assert viz.png_parameters(png) == expected


def test_the_static_view_starts_at_the_starting_values_and_loads_nothing():
    panel = viz.precomputed_panel(_render([]), CONTROLS)
    start = re.search(r'<img class="dn-frame"[^>]*data-key="([0-9-]+)" src="([^"]+)"', panel.static_html)
    assert start.group(1) == "0-1-1"
    assert viz.png_parameters(base64.b64decode(start.group(2).split(",", 1)[1])) == \
        {"sampler": "DDIM", "steps": 20, "guidance": 3.0}
    assert not re.search(r"(src|href)=\"(https?:)?//", panel.static_html)
    assert "<select" in panel.static_html and panel.static_html.count('type="range"') == 2
    bundle = panel._repr_mimebundle_()
    assert bundle["text/html"] == panel.static_html
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == "precomputed panel: 12 frames over sampler x steps x guidance"


def test_the_live_view_shows_stored_frames_and_draws_values_between_them():
    calls = []
    panel = viz.precomputed_panel(_render(calls), CONTROLS)
    assert isinstance(panel.controls["guidance"], type(panel.controls["guidance"])) and \
        panel.controls["guidance"].max == 10.0
    n = len(calls)
    panel.controls["guidance"].value = 7.5  # a stored value: its frame, no new render
    assert len(calls) == n and viz.png_parameters(panel.image.value)["guidance"] == 7.5
    panel.controls["guidance"].value = 4.5  # between the stored values: drawn live
    assert calls[-1] == ("DDIM", 20, 4.5) and viz.png_parameters(panel.image.value)["guidance"] == 4.5
    panel.controls["sampler"].value = "Euler a"
    assert calls[-1] == ("Euler a", 20, 4.5)


def test_palette_shrinks_plots_and_keeps_the_stamp():
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.scatter(range(200), [i * i % 17 for i in range(200)], s=3)
    png = viz.figure_png(fig)
    small = viz.stamp_png(png, {"t": 1}, palette=32)
    assert len(small) < len(png) and viz.png_parameters(small) == {"t": 1}
    assert Image.open(__import__("io").BytesIO(small)).mode == "P"


def test_jpeg_frames_carry_their_stamp_and_mime_type():
    rng = __import__("numpy").random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype="uint8"))
    buffer = __import__("io").BytesIO()
    noise.save(buffer, format="png")
    jpeg = viz.stamp_png(buffer.getvalue(), {"t": 500}, jpeg=80)
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) < len(buffer.getvalue()) / 2
    assert viz.png_parameters(jpeg) == {"t": 500}
    panel = viz.precomputed_panel(lambda t: noise, [viz.control("t", [0, 1])], jpeg=80)
    assert "data:image/jpeg;base64," in panel.static_html and panel.image.format == "jpeg"


def test_pil_frames_are_kept_as_they_are():
    picture = Image.new("RGB", (8, 4), (200, 10, 10))
    panel = viz.precomputed_panel(lambda t: picture, [viz.control("t", [0, 1])], pixelated=True)
    _, frames = _static_frames(panel)
    assert Image.open(__import__("io").BytesIO(frames["1"])).getpixel((3, 2)) == (200, 10, 10)
    assert "image-rendering:pixelated" in panel.static_html


def test_bad_controls_get_clear_errors():
    with pytest.raises(ValueError, match="at least one value"):
        viz.control("steps", [])
    with pytest.raises(ValueError, match="twice"):
        viz.control("steps", [5, 5])
    with pytest.raises(ValueError, match="not one of"):
        viz.control("steps", [5, 10], value=7)
    with pytest.raises(ValueError, match="live range"):
        viz.control("guidance", [1.0, 12.0], live=(0.0, 10.0, 0.5))
    with pytest.raises(ValueError, match="more than"):
        viz.precomputed_panel(lambda a, b: None, [viz.control("a", range(30)), viz.control("b", range(30))])
    with pytest.raises(ValueError, match="share a name"):
        viz.precomputed_panel(lambda a: None, [viz.control("a", [1]), viz.control("a", [2])])
    with pytest.raises(ValueError, match="matplotlib Figure or a PIL image"):
        viz.precomputed_panel(lambda a: None, [viz.control("a", [1])])


def test_denoising_animation_can_store_jpeg_frames():
    import torch

    frames = [torch.rand(2, 3, 96, 96) * 2 - 1 for _ in range(3)]  # noise: PNG cannot shrink it
    png = viz.denoising_animation(frames).data
    jpeg = viz.denoising_animation(frames, frame_format="jpeg").data
    assert "data:image/jpeg;base64" in jpeg and "data:image/png;base64" not in jpeg
    assert "data:image/png;base64" in png and len(jpeg) < len(png)
    with pytest.raises(ValueError, match="frame_format"):
        viz.denoising_animation(frames, frame_format="gif")


def test_scatter_animation_and_figures_can_be_jpeg(monkeypatch):
    import matplotlib.pyplot as plt
    import torch

    clouds = [torch.randn(2000, 2, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    png, jpeg = viz.scatter_animation(clouds).data, viz.scatter_animation(clouds, frame_format="jpeg").data
    assert "data:image/jpeg;base64" in jpeg and "data:image/png;base64" not in jpeg and len(jpeg) < len(png)
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    fig = plt.figure()
    plt.imshow(torch.rand(64, 64, 3).numpy())
    viz.show_jpeg(fig)
    assert len(shown) == 1 and shown[0].format == "jpeg" and shown[0].data[:2] == b"\xff\xd8"
    assert not plt.fignum_exists(fig.number)  # closed: the notebook shows the JPEG, not the figure too
