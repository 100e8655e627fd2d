r"""Straight and curved ODE paths on Part I's 2-D toy: what makes a few Euler steps enough.

A deterministic sampler follows an ODE from noise to data; n Euler steps replace each stretch
of the path by its tangent. On a straight path travelled at constant speed the tangent *is* the
path, and one step lands exactly where a thousand do. So the question "how many steps?" is a
question about the paths' shape, and on the toy we can measure it:

- `straightness`: Liu et al.'s S = E int_0^1 || (x_1 - x_0) - v(x_sigma, sigma) ||^2 dsigma, zero
  exactly when every path is a straight line walked at constant speed;
- `length_ratio`: path length over chord length, 1 for straight paths whatever their speed;
- `endpoint_error`: how far n steps land from a many-step solution of the same ODE.

`train_toy_flow` trains Part I's `ToyDenoiser` on the flow-matching loss instead of the noise
loss; `reflow_pairs` couples each noise point with the data point its ODE reaches, which a second
round of flow matching then learns to reach in a straight line (rectified flow, Liu et al. 2022).

Notation: B points, D = 2, K steps of a path; a path is (K + 1, B, D), from noise to data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_notes.fewer_steps.flow import T_SCALE, flow_euler_step, flow_matching_loss
from diffusion_notes.foundations.samplers.ddim import ddim_step
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.foundations.toy2d import ToyDenoiser, ToyDenoiserConfig, fit_toy

Velocity = Callable[[torch.Tensor, float], torch.Tensor]  # v(x (B, D), sigma) -> (B, D)


def train_toy_flow(data: torch.Tensor, x1: torch.Tensor | None = None, config: ToyDenoiserConfig | None = None,
                   steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
                   init: ToyDenoiser | None = None):
    """Train a ToyDenoiser as a velocity model v_theta(x_sigma, 1000 sigma) with `flow_matching_loss`.

    data (N, 2) are the x_0. Without `x1` each example gets fresh noise (flow matching); with x1 (N, 2)
    example i is always paired with x1[i] (a reflow round). `init` starts from a trained model's
    weights instead of a fresh network. The optimiser is `train_toy_denoiser`'s (`toy2d.fit_toy`).
    Returns ``(model, losses, seconds)``.
    """
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"data must have shape (N, 2), got {tuple(data.shape)}")
    if x1 is not None and x1.shape != data.shape:
        raise ValueError(f"x1 must have the shape of data {tuple(data.shape)}, got {tuple(x1.shape)}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    model = ToyDenoiser(config if init is None else init.config)
    if init is not None:
        model.load_state_dict(init.state_dict())

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)  # (B,)
        return flow_matching_loss(model, data[idx], g, x1=None if x1 is None else x1[idx])

    losses, seconds = fit_toy(model, batch_loss, steps, lr)
    return model, losses, seconds


def velocity_of(model) -> Velocity:
    """The flow model as the ODE's right-hand side: v(x, sigma) = model(x, 1000 sigma), without gradients."""

    @torch.no_grad()
    def v(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return model(x, torch.full((x.shape[0],), float(sigma) * T_SCALE))

    return v


def uniform_sigmas(n: int) -> torch.Tensor:
    """n + 1 evenly spaced noise levels from 1 down to 0: the plain Euler grid, (n + 1,)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return torch.linspace(1.0, 0.0, n + 1)


@torch.no_grad()
def euler_path(velocity: Velocity, x1: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Every point Euler visits on the flow ODE from x1 (B, D) at sigmas[0] to sigmas[-1]: (K + 1, B, D)."""
    path, x = [x1], x1
    levels = sigmas.tolist()
    for s, s_next in zip(levels[:-1], levels[1:]):
        x = flow_euler_step(x, velocity(x, s), s, s_next)
        path.append(x)
    return torch.stack(path)


@torch.no_grad()
def ddim_path(eps_model, x_T: torch.Tensor, timesteps, schedule: Schedule) -> torch.Tensor:
    """Every point deterministic DDIM visits from x_T (B, D) down the descending `timesteps`, then to x_0.

    The last step goes to t' = -1 (alpha_bar = 1), so the path ends at the model's clean estimate.
    Returns (K + 1, B, D), K = len(timesteps).
    """
    steps = [int(t) for t in timesteps]
    path, x = [x_T], x_T
    for t, t_prev in zip(steps, steps[1:] + [-1]):
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x = ddim_step(x, eps, t, t_prev, schedule).x_prev
        path.append(x)
    return torch.stack(path)


def straightness(path: torch.Tensor, sigmas: torch.Tensor) -> float:
    r"""Liu et al.'s straightness of the paths (K + 1, B, D) walked over the noise levels sigmas (K + 1,).

    $$S = \mathbb E\int_0^1 \left\| (x_1 - x_0) - \frac{dx_\sigma}{d\sigma} \right\|^2 d\sigma$$

    with x_1 = path[0] (noise) and x_0 = path[-1] (data). Each segment's velocity is its difference
    quotient, which for an Euler path is exactly the model's velocity at the segment's start, so the
    integral is the left Riemann sum on the grid. S = 0 when every path is straight and walked at
    constant speed: then one Euler step is exact. A path over [sigma_K, sigma_0] other than [0, 1]
    is held against its mean velocity (x_{sigma_0} - x_{sigma_K}) / (sigma_0 - sigma_K), and the
    integral is divided by the interval's length.

    Book: eq-straightness
    Paper: Liu et al. 2022 (rectified flow), Definition 3.3 (straightness)
    """
    dsigma = sigmas[:-1] - sigmas[1:]  # (K,) > 0
    velocity = (path[:-1] - path[1:]) / dsigma[:, None, None]  # (K, B, D): dx/dsigma
    chord = (path[0] - path[-1]) / dsigma.sum()  # (B, D): x_1 - x_0 on [0, 1], the mean velocity
    gap = ((chord[None] - velocity) ** 2).sum(-1).mean(-1)  # (K,)
    return float((gap * dsigma).sum() / dsigma.sum())


def length_ratio(path: torch.Tensor) -> float:
    """Mean path length over mean chord length ||x_1 - x_0|| of paths (K + 1, B, D): 1 for straight lines.

    Unlike `straightness` it ignores the speed along the path, so it compares paths with different
    time variables (DDIM's timesteps, the flow's sigma).
    """
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)  # (B,)
    chord = (path[-1] - path[0]).norm(dim=-1)  # (B,)
    return float(length.mean() / chord.mean())


def endpoint_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance ||x - reference|| between where few steps land and where many do, (B, D) each."""
    return float((x - reference).norm(dim=-1).mean())


def reflow_pairs(velocity: Velocity, x1: torch.Tensor, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, x_1): each noise point x1 (B, D) and the point n Euler steps of the flow ODE carry it to.

    Training on these pairs (`train_toy_flow(x0, x1=x1)`) asks the next model to reach the same
    endpoint in a straight line: the coupling stays, the paths straighten (Liu et al. 2022, reflow).
    """
    return euler_path(velocity, x1, uniform_sigmas(n))[-1], x1


def flow_coordinates(path: torch.Tensor, timesteps, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Points x_t (K + 1, B, D) at `timesteps` (K + 1,), moved onto the straight-line path (-1: alpha_bar = 1).

    $$x_\sigma = \frac{x_t}{\sqrt{\bar\alpha_t} + \sqrt{1-\bar\alpha_t}},\qquad
      \sigma = \frac{\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t} + \sqrt{1-\bar\alpha_t}}$$

    turns x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps into (1 - sigma) x_0 + sigma eps, so
    the paths of an eps model and of a flow model can be measured in the same coordinates; a DDIM
    step is an Euler step there. A `ddim_path` over timesteps ts has the points at ts and then -1.
    Returns (path (K + 1, B, D), sigmas (K + 1,)).

    Book: eq-ddim-as-flow
    """
    steps = [int(t) for t in timesteps]
    if len(steps) != path.shape[0]:
        raise ValueError(f"one timestep per point of the path: {path.shape[0]} points, {len(steps)} timesteps")
    alpha_bar = torch.cat([schedule.alphas_cumprod.to(torch.float64), torch.ones(1, dtype=torch.float64)])
    a = alpha_bar[torch.as_tensor(steps)]  # (K + 1,): index -1 reads the appended 1
    scale = a.sqrt() + (1 - a).sqrt()  # (K + 1,)
    return path / scale[:, None, None].to(path.dtype), ((1 - a).sqrt() / scale).to(torch.float32)
