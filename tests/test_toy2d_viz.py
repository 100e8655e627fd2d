"""Toy data, the toy denoiser, timestep embeddings and the figure helpers."""

import matplotlib

matplotlib.use("Agg")

import re

import pytest
import torch

from diffusion_notes import viz
from diffusion_notes.foundations import samplers, toy2d
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.nn import timestep_embedding


@pytest.mark.parametrize("name", list(toy2d.TOY_DATASETS))
def test_toy_data_shapes_labels_and_reproducibility(name):
    x, y = toy2d.sample_toy(name, 500, torch.Generator().manual_seed(0), with_labels=True)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and y.shape == (500,)
    assert set(y.tolist()) <= set(range(toy2d.num_classes(name)))
    assert 0.3 < x.std().item() < 3.0
    again = toy2d.sample_toy(name, 500, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_gaussian_mixture_points_sit_near_their_component():
    x, y = toy2d.sample_toy("gaussian_mixture", 2000, torch.Generator().manual_seed(0), with_labels=True)
    angle = torch.atan2(x[:, 1], x[:, 0]) % (2 * torch.pi)
    nearest = torch.round(angle / (2 * torch.pi / 8)).long() % 8
    assert (nearest == y).float().mean() > 0.99


def test_bad_toy_input():
    with pytest.raises(ValueError, match="known ones: gaussian_mixture"):
        toy2d.sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="positive integer"):
        toy2d.sample_toy("two_moons", 0)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        toy2d.ToyDenoiser()(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        toy2d.train_toy_denoiser(torch.zeros(10, 3), make_schedule("linear"), steps=1)


@pytest.mark.slow
def test_training_lowers_the_loss_and_samples_land_on_the_data():
    schedule = make_schedule("linear")
    data = toy2d.sample_toy("gaussian_mixture", 4000, torch.Generator().manual_seed(0))
    model, losses, _ = toy2d.train_toy_denoiser(data, schedule, steps=600, batch_size=256, seed=0)
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
    out = samplers.sample(model, (500, 2), num_inference_steps=100, schedule=schedule,
                          generator=torch.Generator().manual_seed(0))
    radius = out.norm(dim=1)
    assert ((radius - 2.0).abs() < 0.5).float().mean() > 0.8  # components sit on a circle of radius 2


def test_conditional_denoiser_uses_its_label():
    model = toy2d.ToyDenoiser(toy2d.ToyDenoiserConfig(num_classes=3))
    x, t = torch.zeros(4, 2), torch.full((4,), 10)
    a = model(x, t, torch.tensor([0, 0, 0, 0]))
    b = model(x, t, torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(a, b)
    assert torch.allclose(model(x, t), model(x, t, torch.full((4,), model.null_label)))
    with pytest.raises(ValueError, match="takes no condition"):
        toy2d.ToyDenoiser()(x, t, torch.zeros(4, dtype=torch.long))


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 1, 500]), 16)
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.ones(8)) and torch.allclose(e[0, 8:], torch.zeros(8))
    assert not torch.allclose(e[1], e[2])
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 7)


def test_to_image_and_grid():
    x = torch.linspace(-2, 2, 3 * 4 * 4).view(3, 4, 4)
    img = viz.to_image(x)
    assert img.shape == (4, 4, 3) and img.min() == 0.0 and img.max() == 1.0
    fig = viz.image_grid(torch.zeros(5, 3, 4, 4), nrow=3, titles=list("abcde"))
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        viz.to_image(torch.zeros(2, 3, 4, 4))


def test_animations_are_html_players():
    frames = [torch.rand(2, 3, 4, 4) * 2 - 1 for _ in range(3)]
    html = viz.denoising_animation(frames, titles=["a", "b", "c"]).data
    assert "_anim_img" in html and html.count("data:image/png") >= 3
    html = viz.scatter_animation([torch.randn(10, 2) for _ in range(2)]).data
    assert "_anim_img" in html


def test_animation_players_load_nothing_from_outside():
    html = viz.denoising_animation([torch.rand(1, 3, 4, 4) * 2 - 1 for _ in range(2)]).data
    assert "http" not in html and "<link" not in html and 'class="fa ' not in html
    for label, symbol in (("Play", "\u25b6"), ("Pause", "\u275a\u275a"), ("Play backwards", "\u25c0"),
                          ("First frame", "\u21e4"), ("Last frame", "\u21e5")):
        assert re.search(f'aria-label="{label}"[^>]*>\\s*{symbol}</button>', html), label


def test_figure_png_is_a_png_and_closes_the_figure():
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    data = viz.figure_png(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
