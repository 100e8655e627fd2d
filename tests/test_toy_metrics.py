"""Distances between 2-D point clouds, checked against closed forms for Gaussians."""

import math

import pytest
import torch

from diffusion_notes.evaluation import toy_metrics


def _gaussian(n, mean, std, seed, dim=2):
    g = torch.Generator().manual_seed(seed)
    return torch.as_tensor(mean, dtype=torch.float64) + std * torch.randn(n, dim, generator=g, dtype=torch.float64)


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt2():
    # Every projection of x + d is the projection of x moved by theta.d, so SW^2 = E[(theta.d)^2] = |d|^2 / 2 in 2-D.
    x = _gaussian(500, [0.0, 0.0], 1.0, seed=0)
    d = torch.tensor([0.6, -0.8], dtype=torch.float64)
    sw = toy_metrics.sliced_wasserstein(x, x + d, num_projections=20_000)
    assert sw == pytest.approx(1.0 / math.sqrt(2), rel=0.02)


def test_sliced_wasserstein_between_gaussians_matches_the_closed_form():
    # Projections of N(0, I) and N(m, s^2 I) are N(0, 1) and N(theta.m, s^2): W2^2 = (theta.m)^2 + (1 - s)^2.
    m, s = torch.tensor([1.0, 0.5]), 0.5
    x = _gaussian(8000, [0.0, 0.0], 1.0, seed=1)
    y = _gaussian(8000, m, s, seed=2)
    expected = math.sqrt(m.pow(2).sum().item() / 2 + (1 - s) ** 2)
    assert toy_metrics.sliced_wasserstein(x, y, num_projections=500) == pytest.approx(expected, rel=0.03)


def test_sliced_wasserstein_is_near_zero_for_one_distribution_and_handles_unequal_sizes():
    x = _gaussian(1000, [0.0, 0.0], 1.0, seed=3)
    assert toy_metrics.sliced_wasserstein(x, x) == 0.0
    assert toy_metrics.sliced_wasserstein(x, torch.cat([x, x])) < 1e-12  # same empirical distribution
    same = toy_metrics.sliced_wasserstein(x, _gaussian(1000, [0.0, 0.0], 1.0, seed=4))
    shifted = toy_metrics.sliced_wasserstein(x, _gaussian(1000, [0.5, 0.0], 1.0, seed=4))
    assert same < 0.1 < shifted
    assert toy_metrics.sliced_wasserstein(x, x + 1) == toy_metrics.sliced_wasserstein(x, x + 1)  # seeded


def _mmd_naive(x, y, bandwidths):
    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h)) for h in bandwidths)

    N, M = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(N) for j in range(N) if i != j) / (N * (N - 1))
    kyy = sum(k(y[i], y[j]) for i in range(M) for j in range(M) if i != j) / (M * (M - 1))
    kxy = sum(k(x[i], y[j]) for i in range(N) for j in range(M)) / (N * M)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_a_pairwise_loop():
    x, y = _gaussian(12, [0.0, 0.0], 1.0, seed=5), _gaussian(9, [0.3, 0.0], 0.7, seed=6)
    assert toy_metrics.mmd(x, y, bandwidths=(0.2, 1.0)) == pytest.approx(_mmd_naive(x, y, (0.2, 1.0)), rel=1e-9)


def test_mmd_between_gaussians_matches_the_closed_form():
    # For x ~ N(mu1, s1^2 I), y ~ N(mu2, s2^2 I) in D dims and k = exp(-|a - b|^2 / 2h^2):
    # E k(x, y) = (h^2 / (h^2 + s1^2 + s2^2))^(D/2) exp(-|mu1 - mu2|^2 / (2 (h^2 + s1^2 + s2^2))).
    def expected_kernel(mu, s1, s2, h):
        v = h * h + s1 * s1 + s2 * s2
        return (h * h / v) * math.exp(-mu**2 / (2 * v))

    h, mu, s1, s2 = 0.5, 0.8, 1.0, 0.6
    x, y = _gaussian(3000, [0.0, 0.0], s1, seed=7), _gaussian(3000, [mu, 0.0], s2, seed=8)
    expected = expected_kernel(0, s1, s1, h) + expected_kernel(0, s2, s2, h) - 2 * expected_kernel(mu, s1, s2, h)
    assert toy_metrics.mmd(x, y, bandwidths=(h,)) == pytest.approx(expected, abs=0.01)
    assert abs(toy_metrics.mmd(x, _gaussian(3000, [0.0, 0.0], s1, seed=9), bandwidths=(h,))) < 0.005


def test_support_fraction_and_coverage():
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    samples = torch.tensor([[0.05, 0.0], [0.95, 0.0], [0.02, 0.0], [3.0, 3.0]])
    assert toy_metrics.support_fraction(samples, reference, radius=0.1) == pytest.approx(0.75)
    assert toy_metrics.coverage(samples, reference, radius=0.1) == pytest.approx(2 / 3)
    collapsed = torch.zeros(50, 2)  # all correct, no diversity
    assert toy_metrics.support_fraction(collapsed, reference, radius=0.1) == 1.0
    assert toy_metrics.coverage(collapsed, reference, radius=0.1) == pytest.approx(1 / 3)


def test_bad_input_speaks_to_the_reader():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=r"\(N, D\) tensor"):
        toy_metrics.sliced_wasserstein(torch.zeros(5), x)
    with pytest.raises(ValueError, match="same dimension"):
        toy_metrics.mmd(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        toy_metrics.sliced_wasserstein(torch.full((3, 2), float("nan")), x)
    with pytest.raises(ValueError, match="num_projections"):
        toy_metrics.sliced_wasserstein(x, x, num_projections=0)
    with pytest.raises(ValueError, match="at least 2 points"):
        toy_metrics.mmd(torch.zeros(1, 2), x)
    with pytest.raises(ValueError, match="radius"):
        toy_metrics.coverage(x, x, radius=0)


def test_sliced_wasserstein_in_one_dimension_is_the_exact_w2_for_unequal_sizes():
    # Quantile functions of {0, 1, 2} and {0, 3}: integrate (Qx - Qy)^2 by hand: 0 + 1/6 + 4/6 + 1/3 = 7/6.
    x, y = torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([[3.0], [0.0]])
    assert toy_metrics.sliced_wasserstein(x, y, num_projections=3) == pytest.approx(math.sqrt(7 / 6), rel=1e-12)
