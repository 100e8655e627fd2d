"""The path measurements of Chapter 18's toy (fewer_steps.toy) on paths whose answers are known."""

import math

import pytest
import torch

from diffusion_notes.fewer_steps import toy
from diffusion_notes.foundations import schedules, toy2d
from diffusion_notes.foundations.grids import make_grid

g = torch.Generator().manual_seed(0)
X0, X1 = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)


def along(curve, n=2000):
    """A path (n + 1, B, 2) over sigma from 1 down to 0, and its sigmas."""
    sigmas = toy.uniform_sigmas(n)
    return torch.stack([curve(float(s)) for s in sigmas]), sigmas


def test_a_straight_path_at_constant_speed_has_straightness_zero_and_ratio_one():
    path, sigmas = along(lambda s: (1 - s) * X0 + s * X1, 50)
    assert toy.straightness(path, sigmas) == pytest.approx(0.0, abs=1e-10)
    assert toy.length_ratio(path) == pytest.approx(1.0, abs=1e-6)


def test_a_straight_path_at_changing_speed_is_straight_by_length_but_not_by_s():
    # x = x0 + sigma^2 (x1 - x0): dx/dsigma = 2 sigma c, so S = E|c|^2 int (1 - 2 sigma)^2 = E|c|^2 / 3
    path, sigmas = along(lambda s: X0 + s**2 * (X1 - X0))
    expected = float(((X1 - X0) ** 2).sum(-1).mean()) / 3
    assert toy.straightness(path, sigmas) == pytest.approx(expected, rel=2e-3)
    assert toy.length_ratio(path) == pytest.approx(1.0, abs=1e-5)


def test_a_quarter_circle_has_the_known_straightness_and_length_ratio():
    # from (0, 1) at sigma = 1 to (1, 0) at sigma = 0: S = pi^2 / 4 - 2, length / chord = (pi / 2) / sqrt 2
    def arc(s):
        return torch.tensor([[math.cos(math.pi * s / 2), math.sin(math.pi * s / 2)]], dtype=torch.float64)

    path, sigmas = along(arc)
    assert toy.straightness(path, sigmas.double()) == pytest.approx(math.pi**2 / 4 - 2, rel=1e-3)
    assert toy.length_ratio(path) == pytest.approx(math.pi / 2 / math.sqrt(2), rel=1e-5)


def test_one_euler_step_is_exact_on_a_straight_field_and_not_on_a_rotating_one():
    straight = lambda x, s: X1 - X0  # noqa: E731  every path is x0 + sigma (x1 - x0)
    assert torch.allclose(toy.euler_path(straight, X1, toy.uniform_sigmas(1))[-1], X0, atol=1e-6)
    x0, x1 = toy.reflow_pairs(straight, X1, 7)
    assert torch.allclose(x0, X0, atol=1e-5) and x1 is X1
    rotating = lambda x, s: torch.stack([-x[:, 1], x[:, 0]], dim=1)  # noqa: E731  circles around 0
    one, many = (toy.euler_path(rotating, X1, toy.uniform_sigmas(n))[-1] for n in (1, 1000))
    assert toy.endpoint_error(one, many) > 10 * toy.endpoint_error(
        toy.euler_path(rotating, X1, toy.uniform_sigmas(100))[-1], many)


def test_ddim_paths_for_one_data_point_are_straight_in_flow_coordinates():
    schedule = schedules.make_schedule("scaled_linear")
    point = torch.tensor([[0.7, -1.2]])

    def exact_eps(x, t):  # the noise that explains x_t when the data is the single point
        a = schedule.alphas_cumprod[t].float()[:, None]
        return (x - a.sqrt() * point) / (1 - a).sqrt()

    timesteps = make_grid("ddim", 20, schedule, spacing="trailing").timesteps
    path = toy.ddim_path(exact_eps, X1, timesteps, schedule)
    flat, sigmas = toy.flow_coordinates(path, [*timesteps.tolist(), -1], schedule)
    assert sigmas[0] > 0.9 and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())
    assert torch.allclose(flat[-1], point.expand_as(X1), atol=1e-4)
    assert toy.length_ratio(flat) == pytest.approx(1.0, abs=1e-4)
    assert toy.straightness(flat, sigmas) < 1e-6
    assert toy.length_ratio(path) > 1.0 + 1e-3  # in x_t itself the same paths bend
    with pytest.raises(ValueError, match="one timestep per point"):
        toy.flow_coordinates(path, timesteps, schedule)


def test_train_toy_flow_checks_its_input_and_can_start_from_a_model():
    data = toy2d.sample_toy("two_moons", 256)
    with pytest.raises(ValueError, match="shape"):
        toy.train_toy_flow(data[:, :1])
    with pytest.raises(ValueError, match="x1"):
        toy.train_toy_flow(data, x1=data[:10])
    config = toy2d.ToyDenoiserConfig(hidden=16, num_blocks=1, time_dim=8)
    model, losses, _ = toy.train_toy_flow(data, config=config, steps=3, batch_size=8)
    assert len(losses) == 3 and not model.training
    copy, _, _ = toy.train_toy_flow(data, x1=torch.randn(256, 2), steps=1, batch_size=8, lr=1e-12, init=model)
    assert copy is not model
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(copy.parameters(), model.parameters()))
