"""How close is a cloud of 2-D samples to the distribution it should come from?

Part I's toy data sets are known exactly, so a sampler's output can be compared
with fresh draws from the true distribution. Two distances between point clouds:

    sliced_wasserstein   average, over random directions, of the 1-D Wasserstein-2
                         distance between the projected clouds (sort and compare)
    mmd                  maximum mean discrepancy with a Gaussian kernel

Both are zero (up to sampling noise) when the clouds come from the same
distribution; `sliced_wasserstein` is in the units of the data, which makes it
easy to read. And two per-sample scores for conditional sampling (Chapter 3):

    support_fraction     fidelity: the share of samples lying on the reference data
    coverage             diversity: the share of the reference data that some sample lies near
"""

from __future__ import annotations

import math

import torch


def _check_points(x, name):
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an (N, D) tensor of points with N >= 1, got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values (did the sampler diverge?)")
    return x.detach().to(torch.float64)


def _check_pair(x, y):
    x, y = _check_points(x, "x"), _check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


def _w2_squared_1d(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Exact squared W_2 between the columns of px (N, P) and py (M, P), each column an empirical 1-D measure.

    The quantile functions are step functions; integrate (Q_x(u) - Q_y(u))^2 over the
    intervals between their merged breakpoints i/N and j/M. Returns (P,).
    """
    qx, qy = px.sort(dim=0).values, py.sort(dim=0).values  # (N, P), (M, P)
    N, M = qx.shape[0], qy.shape[0]
    if N == M:
        return ((qx - qy) ** 2).mean(dim=0)
    dtype, device = qx.dtype, qx.device
    cuts = torch.cat([torch.arange(N + 1, dtype=dtype) / N, torch.arange(M + 1, dtype=dtype) / M]).unique()  # sorted
    widths, middles = cuts.diff(), (cuts[1:] + cuts[:-1]) / 2  # (K,) each
    ix = (middles * N).floor().long().clamp(max=N - 1).to(device)
    iy = (middles * M).floor().long().clamp(max=M - 1).to(device)
    return (widths.to(device)[:, None] * (qx[ix] - qy[iy]) ** 2).sum(dim=0)  # (P,)


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    r"""The sliced Wasserstein-2 distance between the point clouds x (N, D) and y (M, D).

    $$\mathrm{SW}_2(x, y) = \Big(\mathbb E_{\theta \sim \mathcal U(S^{D-1})}\,
      W_2^2\big(\theta^\top x,\ \theta^\top y\big)\Big)^{1/2}$$

    Each 1-D W_2 is exact: it compares the sorted projections (the empirical
    quantile functions, step functions when N != M). The
    expectation over directions is a Monte Carlo average over `num_projections`
    directions drawn from `generator` (a fixed default generator if None, so the
    same clouds always give the same number). For a cloud and the same cloud
    shifted by d, in 2-D it is |d| / sqrt(2).

    Paper: Bonneel et al. 2015 (Sliced and Radon Wasserstein barycenters of measures), eq. 4
    """
    x, y = _check_pair(x, y)
    if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be a positive integer, got {num_projections!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)  # (D, P)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)  # unit directions
    return math.sqrt(_w2_squared_1d(x @ theta, y @ theta).mean().item())  # projections (N, P), (M, P)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0)) -> float:
    r"""Squared maximum mean discrepancy between x (N, D) and y (M, D), unbiased estimate.

    $$\mathrm{MMD}^2 = \mathbb E[k(x, x')] + \mathbb E[k(y, y')] - 2\,\mathbb E[k(x, y)], \qquad
      k(a, b) = \sum_{h} \exp\!\Big(-\frac{\lVert a - b\rVert^2}{2h^2}\Big)$$

    summed over the kernel widths h in `bandwidths` (one width sees one scale of
    structure). The x-x and y-y averages leave out the diagonal, so the estimate
    is unbiased and can be slightly negative when x and y come from one distribution.
    Needs N, M >= 2; memory grows as N M.

    Paper: Gretton et al. 2012 (A kernel two-sample test), eq. 3
    """
    x, y = _check_pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"mmd needs at least 2 points in each cloud, got {x.shape[0]} and {y.shape[0]}")
    bandwidths = [float(h) for h in bandwidths]
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths must be positive numbers, got {bandwidths!r}")

    def kernel(a, b):
        sq = torch.cdist(a, b) ** 2  # (N, M)
        return sum(torch.exp(-sq / (2 * h * h)) for h in bandwidths)

    N, M = x.shape[0], y.shape[0]
    k_xx = (kernel(x, x).sum() - N * len(bandwidths)) / (N * (N - 1))  # diagonal terms are exp(0) = 1
    k_yy = (kernel(y, y).sum() - M * len(bandwidths)) / (M * (M - 1))
    k_xy = kernel(x, y).mean()
    return (k_xx + k_yy - 2 * k_xy).item()


def _nearest_distance(queries: torch.Tensor, points: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each query (Q, D), the distance to its nearest neighbour among points (N, D): (Q,)."""
    return torch.cat([torch.cdist(q, points).min(dim=1).values for q in queries.split(chunk)])


def support_fraction(samples: torch.Tensor, reference: torch.Tensor, radius: float) -> float:
    """Fidelity: the fraction of samples within `radius` of some reference point.

    With `reference` the data of the class a sample was asked for, this is the share
    of samples that landed in the right class's support.
    """
    samples, reference = _check_pair(samples, reference)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    return (_nearest_distance(samples, reference) <= radius).double().mean().item()


def coverage(samples: torch.Tensor, reference: torch.Tensor, radius: float) -> float:
    """Diversity: the fraction of reference points with some sample within `radius`.

    A sampler that puts every point on one spot of the class scores low even if
    every sample is correct (high `support_fraction`).
    """
    samples, reference = _check_pair(samples, reference)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    return (_nearest_distance(reference, samples) <= radius).double().mean().item()
