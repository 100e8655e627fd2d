"""The sampler panel draws at once, re-renders with the controls' values, and has static companions."""

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib import pyplot as plt

from diffusion_notes import viz


def _recording_render(calls):
    def render(sampler, steps, guidance, seed):
        calls.append((sampler, steps, guidance, seed))
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, steps], [0, guidance])
        ax.set_title(f"{sampler} {steps} {guidance} {seed}")
        return fig

    return render


def test_panel_draws_the_initial_setting_immediately():
    calls = []
    open_before = set(plt.get_fignums())  # other tests may leave figures open
    panel = viz.sampler_panel(_recording_render(calls), samplers=["DDIM", "Euler a"], steps=[5, 20, 50],
                                  guidance=(0.0, 10.0, 0.5), guidance_value=7.5, seed=3)
    assert calls == [("DDIM", 5, 7.5, 3)]
    assert panel.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(panel.controls) == {"sampler", "steps", "guidance", "seed"}
    assert panel.controls["steps"].continuous_update is False
    assert set(plt.get_fignums()) == open_before  # the rendered figure was closed


def test_panel_rerenders_when_a_control_changes():
    calls = []
    panel = viz.sampler_panel(_recording_render(calls), samplers=["DDIM", "Euler a"], steps=[5, 20, 50],
                                  guidance=(0.0, 10.0, 0.5))
    first = panel.image.value
    panel.controls["steps"].value = 50
    panel.controls["sampler"].value = "Euler a"
    panel.controls["guidance"].value = 3.0
    panel.controls["seed"].value = 11
    assert calls[1:] == [("DDIM", 50, 1.0, 0), ("Euler a", 50, 1.0, 0), ("Euler a", 50, 3.0, 0),
                         ("Euler a", 50, 3.0, 11)]
    assert panel.image.value != first


def test_left_out_controls_pass_their_fixed_values():
    calls = []
    panel = viz.sampler_panel(_recording_render(calls), samplers=None, steps=None, seed=None,
                                  guidance=(0.0, 5.0, 0.25), sampler_value="ddim", steps_value=25, guidance_value=2.0)
    assert set(panel.controls) == {"guidance"}
    panel.controls["guidance"].value = 4.0
    assert calls == [("ddim", 25, 2.0, 0), ("ddim", 25, 4.0, 0)]


def test_companions_render_every_setting():
    calls = []
    settings = [("DDIM", 5), ("DDIM", 50, 1.0, 1), viz.Setting("Euler a", 20, 3.0, 2)]
    fig = viz.companion_grid(_recording_render(calls), settings, ncols=2)
    assert len(fig.axes) == 4 and calls == [("DDIM", 5, 1.0, 0), ("DDIM", 50, 1.0, 1), ("Euler a", 20, 3.0, 2)]
    plt.close(fig)
    html = viz.companion_animation(_recording_render(calls), settings[:2])
    assert "<script" in html.data and len(calls) == 5


def test_bad_panel_input():
    render = _recording_render([])
    with pytest.raises(ValueError, match="not one of the step counts"):
        viz.sampler_panel(render, ["DDIM"], steps=[5, 10], steps_value=7)
    with pytest.raises(ValueError, match="outside the slider's range"):
        viz.sampler_panel(render, ["DDIM"], guidance=(0.0, 5.0, 0.5), guidance_value=7.5)
    with pytest.raises(ValueError, match="pass sampler_value and steps_value"):
        viz.sampler_panel(render, samplers=None)
    with pytest.raises(ValueError, match="must return a matplotlib Figure"):
        viz.sampler_panel(lambda *args: None, ["DDIM"])
    with pytest.raises(ValueError, match="at least one setting"):
        viz.companion_grid(render, [])


def test_extra_controls_redraw_and_a_pil_render_skips_matplotlib():
    import ipywidgets as ipw
    from PIL import Image

    box = ipw.Text(value="red")
    calls = []

    def render(sampler, steps, guidance, seed):
        calls.append(box.value)
        return Image.new("RGB", (8, 8), box.value)

    panel = viz.sampler_panel(render, samplers=None, sampler_value="ddim", steps=None, steps_value=5,
                                  seed=None, extra_controls={"prompt": box})
    first = panel.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and panel.controls["prompt"] is box
    box.value = "blue"  # an extra control redraws the picture with its new value
    assert calls == ["red", "blue"] and panel.image.value != first
    assert isinstance(panel.children[0].children[0], ipw.Text)  # extra controls come first


def test_render_must_return_a_figure_or_a_pil_image():
    with pytest.raises(ValueError, match="Figure or a PIL image"):
        viz.sampler_panel(lambda *a: "not a picture", samplers=None, sampler_value="ddim",
                              steps=None, steps_value=5)
