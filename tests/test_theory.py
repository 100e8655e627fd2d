"""The theory under the loss: the bound's weights, Tweedie's formula and eps as a scaled score.

Each function is held against a case computed another way: the KL between two Gaussians written out,
a Gaussian data distribution whose posterior mean and score are known in closed form, and the
finite data set of `oracle`, whose log density is a log-sum-exp that autograd differentiates.
"""

import math

import pytest
import torch

from diffusion_notes.foundations import diffusion
from diffusion_notes.foundations.oracle import ideal_eps_model, ideal_x0
from diffusion_notes.foundations.schedules import make_schedule

SCHEDULE = make_schedule("linear")


def _gaussian_case(t, mu, tau, n=64, seed=0):
    """x0 ~ N(mu, tau^2 I) in 2-D: x_t, the exact posterior mean E[x0 | x_t] and the exact score of p_t."""
    g = torch.Generator().manual_seed(seed)
    ab = SCHEDULE.alphas_cumprod[t].item()
    x_t = math.sqrt(ab) * mu + math.sqrt(ab * tau**2 + 1 - ab) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    var_t = ab * tau**2 + 1 - ab  # the variance of p_t, a Gaussian too
    score = -(x_t - math.sqrt(ab) * mu) / var_t
    posterior_mean = mu + math.sqrt(ab) * tau**2 / var_t * (x_t - math.sqrt(ab) * mu)
    return x_t, score, posterior_mean


@pytest.mark.parametrize("t", [0, 50, 400, 999])
def test_tweedie_gives_the_gaussian_posterior_mean(t):
    mu = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x_t, score, posterior_mean = _gaussian_case(t, mu, tau=0.3)
    torch.testing.assert_close(diffusion.tweedie_x0(x_t, t, score, SCHEDULE), posterior_mean, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", [0, 50, 400, 999])
def test_score_from_the_optimal_eps_is_the_gaussian_score(t):
    mu = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    x_t, score, posterior_mean = _gaussian_case(t, mu, tau=0.7, seed=1)
    eps_star = diffusion.eps_from_x0(x_t, t, posterior_mean, SCHEDULE)  # E[eps | x_t]
    torch.testing.assert_close(diffusion.score_from_eps(eps_star, t, SCHEDULE), score, rtol=1e-9, atol=1e-9)


def _log_density(x_t, t, data):
    """log p_t(x_t) when x0 is uniform on the points `data` (N, 2): a mixture of N Gaussians."""
    ab = SCHEDULE.alphas_cumprod[t]  # (B,)
    sq = (x_t[:, None, :] - ab.sqrt()[:, None, None] * data[None]).pow(2).sum(-1)  # (B, N)
    d = x_t.shape[1]
    return (torch.logsumexp(-sq / (2 * (1 - ab))[:, None], dim=1) - math.log(data.shape[0])
            - d / 2 * torch.log(2 * math.pi * (1 - ab)))


def test_oracle_eps_and_x0_agree_with_the_autograd_score_of_a_finite_data_set():
    g = torch.Generator().manual_seed(2)
    data = torch.randn(7, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 40, 200, 600, 999])
    x_t = torch.randn(5, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    (score,) = torch.autograd.grad(_log_density(x_t, t, data).sum(), x_t)
    x_t = x_t.detach()
    eps = ideal_eps_model(data, SCHEDULE)(x_t, t)
    torch.testing.assert_close(diffusion.score_from_eps(eps, t, SCHEDULE), score, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(diffusion.tweedie_x0(x_t, t, score, SCHEDULE), ideal_x0(x_t, t, data, SCHEDULE),
                               rtol=1e-7, atol=1e-9)


def test_a_sign_error_would_be_caught():
    """The score points towards the data: one small step along it raises the log density."""
    data = torch.tensor([[2.0, 0.0], [-2.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([100, 100, 100])
    x_t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-3.0, -1.0]], dtype=torch.float64)
    score = diffusion.score_from_eps(ideal_eps_model(data, SCHEDULE)(x_t, t), t, SCHEDULE)
    assert (_log_density(x_t + 1e-3 * score, t, data) > _log_density(x_t, t, data)).all()


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_elbo_weight_is_the_kl_between_the_two_posteriors(kind):
    """KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)) = lambda_t ||eps - eps_theta||^2 for equal variances."""
    schedule = make_schedule(kind)
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([1, 5, 100, 500, 998])
    x0, eps, eps_theta = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = diffusion.q_sample(x0, t, eps, schedule)
    mean_q, variance = diffusion.q_posterior(x0, x_t, t, schedule)  # the truth's reverse step
    mean_p, _ = diffusion.q_posterior(diffusion.x0_from_eps(x_t, t, eps_theta, schedule), x_t, t, schedule)  # the model's
    kl = (mean_q - mean_p).pow(2).sum(1) / (2 * variance.reshape(-1))  # (B,), equal variances
    weighted = diffusion.elbo_weight(t, schedule) * (eps - eps_theta).pow(2).sum(1)
    torch.testing.assert_close(weighted, kl, rtol=1e-6, atol=1e-12)


def test_elbo_weight_by_hand_and_its_errors():
    t = 10
    beta, ab_prev = SCHEDULE.betas[t].item(), SCHEDULE.alphas_cumprod[t - 1].item()
    assert diffusion.elbo_weight(t, SCHEDULE).item() == pytest.approx(beta / (2 * (1 - beta) * (1 - ab_prev)))
    weights = diffusion.elbo_weight(torch.arange(1, 1000), SCHEDULE)
    assert weights[0] > 10 * weights[-1]  # the bound leans on the least noisy steps
    with pytest.raises(ValueError, match="L_0"):
        diffusion.elbo_weight(0, SCHEDULE)
    with pytest.raises(ValueError, match="same shape"):
        diffusion.tweedie_x0(torch.zeros(2, 2), 5, torch.zeros(2, 3), SCHEDULE)
