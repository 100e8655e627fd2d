"""The ideal denoiser of a finite data set, computed exactly instead of learned.

If the data are N fixed points x^(1..N), the best possible estimate of x0 from x_t
(the one that minimises the noise-prediction loss) is a weighted average of the
data points, weighted by how likely each one is to have produced x_t. Chapter 1
uses it to show a denoising trace on images before any image model is trained,
and to make a point: a perfect minimiser of the training loss can only reproduce
its training set. Learned models generalise because they are *not* perfect.
"""

import torch

from diffusion_notes.foundations.schedules import Schedule, broadcast_at, expand_like
from diffusion_notes.foundations.sigmas import sigma_at


def _alpha_bar_at(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at integer t, or at fractional t (Euler/Karras grids) through sigma = sqrt((1 - ab) / ab)."""
    if not torch.is_floating_point(torch.as_tensor(t)):
        return broadcast_at(schedule.alphas_cumprod, t, like)  # (B, 1, ...)
    sigma = sigma_at(torch.as_tensor(t).cpu(), schedule).reshape(-1)  # (B,) or (1,)
    return expand_like(1 / (1 + sigma**2), like).to(like)  # (B, 1, ...)


def ideal_x0(x_t: torch.Tensor, t: torch.Tensor, data: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    r"""E[x0 | x_t] when x0 is drawn uniformly from the N points ``data``.

    .. math:: \hat x_0(x_t) = \sum_n w_n x^{(n)},\quad
              w = \operatorname{softmax}_n\Big(-\frac{\lVert x_t - \sqrt{\bar\alpha_t}\,x^{(n)}\rVert^2}{2(1-\bar\alpha_t)}\Big)

    Book: eq-ideal-denoiser
    Paper: Karras et al. 2022 (EDM), Appendix B.3, the ideal denoiser of a finite data set.

    Args:
        x_t: (B, ...) noisy samples.
        t: (B,) timesteps: integers, or floats on a sampler's fractional grid.
        data: (N, ...) the data set, same trailing shape as x_t.
    Returns:
        (B, ...) the posterior mean of x0.
    """
    if x_t.shape[1:] != data.shape[1:]:
        raise ValueError(f"x_t has item shape {tuple(x_t.shape[1:])} but data has {tuple(data.shape[1:])}")
    alpha_bar = _alpha_bar_at(t, schedule, x_t).reshape(-1)  # (B,)
    flat_x = x_t.flatten(1)  # (B, P)
    flat_d = data.flatten(1).to(x_t)  # (N, P)
    # ||x_t - sqrt(ab) x_n||^2 = ||x_t||^2 - 2 sqrt(ab) <x_t, x_n> + ab ||x_n||^2, without a (B, N, P) tensor
    sq_dist = (
        flat_x.pow(2).sum(1, keepdim=True)  # (B, 1)
        - 2 * alpha_bar.sqrt()[:, None] * (flat_x @ flat_d.T)  # (B, N)
        + alpha_bar[:, None] * flat_d.pow(2).sum(1)[None, :]  # (B, N)
    )
    w = torch.softmax(-sq_dist / (2 * (1 - alpha_bar))[:, None], dim=1)  # (B, N)
    return (w @ flat_d).view_as(x_t)  # (B, ...)


def ideal_eps_model(data: torch.Tensor, schedule: Schedule):
    """An ``eps_model(x_t, t)`` that is exactly optimal for the finite data set ``data`` (N, ...)."""

    def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = _alpha_bar_at(t, schedule, x_t)  # (B, 1, ...)
        x0_hat = ideal_x0(x_t, t, data, schedule)  # (B, ...)
        return (x_t - alpha_bar.sqrt() * x0_hat) / (1 - alpha_bar).sqrt()  # (B, ...)

    return eps_model
