"""schedules.py: the three schedules against diffusers, the equations, bad input."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_notes.foundations.schedules import (
    SCHEDULE_KINDS,
    Schedule,
    alpha_bar_from_betas,
    broadcast_at,
    cosine_alpha_bar,
    make_schedule,
    sigmas_from_alpha_bar,
    snr,
)

# our kind -> diffusers' DDPMScheduler keyword arguments
DIFFUSERS_CONFIG = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_schedule_matches_diffusers(kind):
    ours = make_schedule(kind)
    ref = DDPMScheduler(**DIFFUSERS_CONFIG[kind])
    torch.testing.assert_close(ours.betas, ref.betas.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alphas, ref.alphas.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_custom_betas_and_length_match_diffusers(kind):
    ours = make_schedule(kind, num_train_timesteps=50, beta_start=0.001, beta_end=0.05)
    ref = DDPMScheduler(
        num_train_timesteps=50, beta_schedule=kind, beta_start=0.001, beta_end=0.05
    )
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_fields_are_float64_of_length_T(kind):
    s = make_schedule(kind, num_train_timesteps=123)
    assert s.kind == kind and s.num_train_timesteps == 123
    for values in (s.betas, s.alphas, s.alphas_cumprod):
        assert values.shape == (123,) and values.dtype == torch.float64
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()  # signal only decreases


def test_alpha_bar_is_the_product_of_alphas():
    betas = torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64)
    expected = torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.5], dtype=torch.float64)
    torch.testing.assert_close(alpha_bar_from_betas(betas), expected)


def test_cosine_schedule_follows_its_alpha_bar_until_clipping():
    T = 1000
    s = make_schedule("cosine", num_train_timesteps=T)
    steps = torch.arange(1, T + 1)  # code step t is paper step t + 1
    expected = cosine_alpha_bar(steps, T)
    unclipped = s.betas < 0.999
    assert unclipped[:-1].all() and not unclipped[-1]  # only the last beta is clipped
    torch.testing.assert_close(s.alphas_cumprod[:-1], expected[:-1])
    assert cosine_alpha_bar(0, T).item() == pytest.approx(1.0)
    assert cosine_alpha_bar(T, T).item() == pytest.approx(0.0, abs=1e-8)


def test_snr_log_snr_and_sigmas():
    s = make_schedule("scaled_linear")
    ab = s.alphas_cumprod
    torch.testing.assert_close(s.snr(), ab / (1 - ab))
    torch.testing.assert_close(snr(ab), ab / (1 - ab))
    torch.testing.assert_close(s.log_snr(), torch.log(ab / (1 - ab)))
    torch.testing.assert_close(s.sigmas(), ((1 - ab) / ab).sqrt())
    torch.testing.assert_close(s.sigmas(), sigmas_from_alpha_bar(ab))
    assert s.snr(10).item() == pytest.approx((ab[10] / (1 - ab[10])).item())
    t = torch.tensor([0, 999])
    torch.testing.assert_close(s.snr(t), snr(ab[t]))
    torch.testing.assert_close(s.alpha_bar(t), ab[t])
    assert (s.log_snr()[1:] < s.log_snr()[:-1]).all()


def test_sigma_is_the_noise_level_of_the_rescaled_sample():
    # x_t / sqrt(alpha_bar) = x0 + sigma_t eps: the variance-exploding view Karras et al. use.
    s = make_schedule("linear")
    t = 500
    x0, eps = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    ab = s.alphas_cumprod[t]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(x_t / ab.sqrt(), x0 + s.sigmas()[t] * eps)


def test_broadcast_at_shapes_dtype_and_values():
    values = torch.arange(10, dtype=torch.float64) / 10
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    out = broadcast_at(values, torch.tensor([1, 5, 9]), like)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), torch.tensor([0.1, 0.5, 0.9]))
    assert broadcast_at(values, 3, like).shape == (1, 1, 1, 1)
    assert broadcast_at(values, torch.tensor([2, 3, 4]), torch.zeros(3, 2)).shape == (3, 1)


def test_broadcast_at_rejects_bad_t():
    values = torch.zeros(10, dtype=torch.float64)
    like = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must be integers in \[0, 9\], got 10"):
        broadcast_at(values, 10, like)
    with pytest.raises(ValueError, match=r"got \[-1, 0, 1\]"):
        broadcast_at(values, torch.tensor([-1, 0, 1]), like)
    with pytest.raises(ValueError, match="float32 tensor"):
        broadcast_at(values, torch.tensor([1.0, 2.0, 3.0]), like)
    with pytest.raises(ValueError, match="got 2 timesteps for a batch of 3"):
        broadcast_at(values, torch.tensor([1, 2]), like)
    with pytest.raises(ValueError, match="int or a"):
        broadcast_at(values, 1.0, like)


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine, got 'quadratic'"):
        make_schedule("quadratic")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_train_timesteps=0), "num_train_timesteps must be at least 1, got 0"),
        (dict(num_train_timesteps=10.0), "num_train_timesteps must be an int"),
        (dict(beta_start=0.0), r"beta_start must be in \(0, 1\), got 0.0"),
        (dict(beta_end=1.5), r"beta_end must be in \(0, 1\), got 1.5"),
        (dict(beta_start=0.02, beta_end=0.01), "beta_start must be <= beta_end"),
        (dict(kind="cosine", beta_end=0.02), "do not apply to the cosine schedule"),
    ],
)
def test_make_schedule_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(**kwargs)


def test_schedule_rejects_mismatched_fields():
    betas = torch.full((5,), 0.1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        Schedule("custom", betas, 1 - betas, alpha_bar_from_betas(betas)[:4])


def test_single_step_schedule():
    s = make_schedule("linear", num_train_timesteps=1)
    assert s.alphas_cumprod.item() == pytest.approx(1 - 1e-4)
    assert math.isfinite(s.sigmas().item())
