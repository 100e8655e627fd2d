"""diffusion.py: forward process, posterior, conversions and loss."""

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.diffusion import (
    check_timesteps,
    eps_from_v,
    eps_from_x0,
    noise_prediction_loss,
    q_posterior,
    q_sample,
    q_step,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from diffusion_notes.foundations.schedules import make_schedule

SCHEDULE = make_schedule("linear")


def _empirical_moments(x):
    return x.mean(dim=0), x.var(dim=0)


@pytest.mark.parametrize("t", [0, 50, 300, 999])
def test_q_sample_has_the_closed_form_mean_and_variance(t):
    N = 500_000
    x0_point = torch.tensor([1.5, -0.5])
    x0 = x0_point.expand(N, 2)  # (N, 2)
    noise = randn((N, 2), make_generator(t))
    mean, var = _empirical_moments(q_sample(x0, t, noise, SCHEDULE))
    ab = SCHEDULE.alphas_cumprod[t].float()
    torch.testing.assert_close(mean, ab.sqrt() * x0_point, atol=6e-3, rtol=0)
    torch.testing.assert_close(var, (1 - ab).expand(2), atol=6e-3, rtol=0)


def test_q_sample_matches_diffusers_add_noise():
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = make_schedule("scaled_linear")
    g = make_generator(0)
    x0, noise = randn((4, 3, 8, 8), g), randn((4, 3, 8, 8), g)
    t = torch.tensor([0, 10, 500, 999])
    expected = ref.add_noise(x0, noise, t)
    torch.testing.assert_close(q_sample(x0, t, noise, schedule), expected, atol=1e-6, rtol=1e-5)


def test_iterated_q_step_matches_q_sample_in_distribution():
    N, t = 200_000, 40
    x0_point = torch.tensor([2.0, -1.0])
    x = x0_point.expand(N, 2)  # (N, 2)
    g = make_generator(1)
    for s in range(t + 1):  # code steps 0..t: x0 -> x_t
        x = q_step(x, s, randn((N, 2), g), SCHEDULE)
    mean, var = _empirical_moments(x)
    ab = SCHEDULE.alphas_cumprod[t].float()
    torch.testing.assert_close(mean, ab.sqrt() * x0_point, atol=6e-3, rtol=0)
    torch.testing.assert_close(var, (1 - ab).expand(2), atol=6e-3, rtol=0)


def test_noiseless_q_steps_shrink_by_sqrt_alpha_bar():
    x0 = torch.tensor([[1.0, -3.0]], dtype=torch.float64)
    x = x0
    for s in range(100):
        x = q_step(x, s, torch.zeros_like(x), SCHEDULE)
    torch.testing.assert_close(x, SCHEDULE.alphas_cumprod[99].sqrt() * x0)


def test_batched_t_equals_per_example_calls():
    g = make_generator(2)
    x0, noise = randn((3, 5), g), randn((3, 5), g)
    t = torch.tensor([3, 400, 998])
    batched = q_sample(x0, t, noise, SCHEDULE)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(batched[i : i + 1], q_sample(x0[i : i + 1], ti, noise[i : i + 1], SCHEDULE))


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_posterior_variance_matches_diffusers(kind):
    config = {"linear": {}, "scaled_linear": dict(beta_start=0.00085, beta_end=0.012)}[kind]
    ref = DDPMScheduler(beta_schedule=kind, **config)
    schedule = make_schedule(kind)
    # diffusers computes in float32: 1 - alpha_bar_t / alpha_bar_prev loses ~3e-4 of its
    # relative precision at small t, so compare at rel 5e-4 (float64 here is exact).
    x = torch.zeros(1, 2, dtype=torch.float64)
    for t in [1, 2, 10, 500, 999]:
        _, variance = q_posterior(x, x, t, schedule)
        assert variance.shape == (1, 1)
        assert variance.item() == pytest.approx(ref._get_variance(t).item(), rel=5e-4)
    ref.set_timesteps(50)  # strided: t -> previous timestep of the grid
    for t, t_prev in [(980, 960), (500, 480), (20, 0)]:
        _, variance = q_posterior(x, x, t, schedule, t_prev=t_prev)
        assert variance.item() == pytest.approx(ref._get_variance(t).item(), rel=5e-4)


def test_posterior_mean_matches_the_paper_formula():
    # Ho et al. eq. 7 written with beta_t and alpha_t directly (not via alpha_bar ratios).
    s = make_schedule("cosine")
    g = make_generator(3)
    x0, x_t = randn((4, 2), g, dtype=torch.float64), randn((4, 2), g, dtype=torch.float64)
    t = torch.tensor([1, 7, 300, 998])
    mean, variance = q_posterior(x0, x_t, t, s)
    ab, ab_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    beta, alpha = s.betas[t], s.alphas[t]
    expected_mean = (ab_prev.sqrt() * beta / (1 - ab))[:, None] * x0 + (
        alpha.sqrt() * (1 - ab_prev) / (1 - ab)
    )[:, None] * x_t
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(variance, ((1 - ab_prev) / (1 - ab) * beta)[:, None])


def test_posterior_at_the_first_step_is_the_data():
    x0, x_t = torch.randn(2, 3), torch.randn(2, 3)
    mean, variance = q_posterior(x0, x_t, 0, SCHEDULE)
    torch.testing.assert_close(mean, x0)
    assert (variance == 0).all()


def test_conversions_round_trip():
    g = make_generator(4)
    x0, eps = randn((5, 3, 4, 4), g), randn((5, 3, 4, 4), g)
    t = torch.tensor([0, 1, 250, 750, 999])
    x_t = q_sample(x0, t, eps, SCHEDULE)
    torch.testing.assert_close(x0_from_eps(x_t, t, eps, SCHEDULE), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_from_x0(x_t, t, x0, SCHEDULE), eps, atol=1e-4, rtol=1e-4)
    v = v_from_x0_eps(x0, eps, t, SCHEDULE)
    torch.testing.assert_close(x0_from_v(x_t, t, v, SCHEDULE), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_from_v(x_t, t, v, SCHEDULE), eps, atol=1e-5, rtol=1e-5)


def test_v_matches_diffusers_get_velocity():
    ref = DDPMScheduler()
    g = make_generator(5)
    x0, eps = randn((3, 2, 4, 4), g), randn((3, 2, 4, 4), g)
    t = torch.tensor([5, 500, 995])
    torch.testing.assert_close(v_from_x0_eps(x0, eps, t, SCHEDULE), ref.get_velocity(x0, eps, t), atol=1e-6, rtol=1e-5)


def test_loss_is_zero_for_the_true_noise_and_positive_otherwise():
    g = make_generator(6)
    x0, noise = randn((8, 2), g), randn((8, 2), g)
    t = torch.randint(0, 1000, (8,), generator=g)

    def perfect(x_t, t_batch):
        assert t_batch.dtype == torch.long and t_batch.shape == (8,)
        return eps_from_x0(x_t, t_batch, x0, SCHEDULE)

    loss = noise_prediction_loss(perfect, x0, SCHEDULE, t=t, noise=noise)
    assert loss.ndim == 0 and loss.item() < 1e-8
    zero = noise_prediction_loss(lambda x_t, t_: torch.zeros_like(x_t), x0, SCHEDULE, t=t, noise=noise)
    assert zero.item() == pytest.approx(noise.pow(2).mean().item())


def test_loss_draws_t_and_noise_from_the_generator_and_passes_cond():
    x0 = torch.randn(16, 2)
    seen = {}

    def model(x_t, t, cond):
        seen["t"], seen["cond"] = t, cond
        return 0.5 * x_t

    a = noise_prediction_loss(model, x0, SCHEDULE, generator=make_generator(0), cond="a cat")
    t_first = seen["t"]
    b = noise_prediction_loss(model, x0, SCHEDULE, generator=make_generator(0), cond="a cat")
    assert a.item() == b.item() and seen["cond"] == "a cat"
    assert torch.equal(seen["t"], t_first) and t_first.shape == (16,)
    assert 0 <= t_first.min() and t_first.max() < 1000 and t_first.unique().numel() > 1
    loss = noise_prediction_loss(lambda x, t: x, x0, SCHEDULE, t=3)  # an int t is broadcast
    assert loss.item() > 0


def test_loss_backpropagates():
    w = torch.nn.Parameter(torch.tensor(0.3))
    loss = noise_prediction_loss(lambda x_t, t: w * x_t, torch.randn(4, 2), SCHEDULE, generator=make_generator(0))
    loss.backward()
    assert w.grad is not None and w.grad != 0


def test_check_timesteps():
    assert check_timesteps(5, 10).item() == 5
    assert check_timesteps(torch.tensor([0, 9]), 10).tolist() == [0, 9]
    with pytest.raises(ValueError, match=r"t must be integers in \[0, 999\], got 1000"):
        check_timesteps(1000, 1000)
    with pytest.raises(ValueError, match=r"t must be integers in \[0, 999\], got a torch.float32 tensor"):
        check_timesteps(torch.tensor([1.0]), 1000)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: q_sample(torch.ones(2, 3), 1000, torch.ones(2, 3), SCHEDULE), r"\[0, 999\], got 1000"),
        (lambda: q_sample(torch.ones(2, 3), -1, torch.ones(2, 3), SCHEDULE), r"\[0, 999\], got -1"),
        (lambda: q_sample(torch.ones(2, 3), 5, torch.ones(2, 4), SCHEDULE), r"same shape, got \(2, 3\) and \(2, 4\)"),
        (lambda: q_sample(torch.ones(2, 3, dtype=torch.long), 5, torch.ones(2, 3), SCHEDULE), "floating point"),
        (lambda: q_sample(torch.full((2, 3), float("nan")), 5, torch.ones(2, 3), SCHEDULE), "NaN"),
        (lambda: q_sample(torch.ones(2, 3), torch.tensor([1, 2, 3]), torch.ones(2, 3), SCHEDULE), "batch of 2"),
        (lambda: q_step(torch.ones(2, 3), 5, torch.ones(3, 3), SCHEDULE), "same shape"),
        (lambda: q_posterior(torch.ones(2, 3), torch.ones(2, 3), 5, SCHEDULE, t_prev=5), r"t_prev must be in \[-1, t - 1\]"),
        (lambda: x0_from_eps(torch.ones(2, 3), 5, torch.ones(2, 2), SCHEDULE), "same shape"),
        (lambda: noise_prediction_loss(lambda x, t: x[:, :1], torch.ones(2, 3), SCHEDULE), "model's output"),
        (lambda: noise_prediction_loss(lambda x, t: x, torch.ones(2, 3), SCHEDULE, t=torch.tensor([1, 2, 3])), "one entry per example"),
    ],
)
def test_bad_input_raises_a_helpful_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
