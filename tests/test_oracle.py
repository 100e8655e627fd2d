"""The ideal denoiser: exact on one point, a weighted mean in general, and it memorises."""

import torch

from diffusion_notes.foundations import diffusion, samplers
from diffusion_notes.foundations.oracle import ideal_eps_model, ideal_x0
from diffusion_notes.foundations.schedules import make_schedule

SCHEDULE = make_schedule("linear")


def test_single_point_gives_the_true_noise():
    x_star = torch.tensor([[0.5, -1.0]])  # (1, 2)
    eps = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 300, 700, 999])
    x_t = diffusion.q_sample(x_star.expand(5, 2), t, eps, SCHEDULE)
    assert torch.allclose(ideal_eps_model(x_star, SCHEDULE)(x_t, t), eps, atol=1e-4)


def test_weights_pick_the_nearer_point_at_low_noise_and_average_at_high_noise():
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    x_t = torch.tensor([[0.9, 0.0], [0.0, 0.0]])
    low, high = ideal_x0(x_t, torch.tensor([5, 999]), data, SCHEDULE)
    assert torch.allclose(low, data[0], atol=1e-3)
    assert torch.allclose(high, data.mean(0), atol=1e-2)


def test_sampling_with_the_ideal_denoiser_reproduces_training_points():
    data = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = samplers.sample(ideal_eps_model(data, SCHEDULE), (4, 3, 4, 4), num_inference_steps=200,
                          schedule=SCHEDULE, generator=torch.Generator().manual_seed(2))
    nearest = torch.cdist(out.flatten(1), data.flatten(1)).min(1).values
    assert (nearest < 0.05).all(), nearest


def test_shape_mismatch_is_a_value_error():
    import pytest

    with pytest.raises(ValueError, match="item shape"):
        ideal_x0(torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(4, 2), SCHEDULE)
