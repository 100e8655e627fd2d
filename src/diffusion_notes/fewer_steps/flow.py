r"""Flow matching on a straight path (rectified flow; Liu et al. 2022, Lipman et al. 2022): SD3's objective.

Draw data x_0 and noise x_1 ~ N(0, I) and join them by a straight line,

    x_sigma = (1 - sigma) x_0 + sigma x_1,   sigma in [0, 1]

whose velocity dx/dsigma = x_1 - x_0 is the same at every point. A network v_theta(x_sigma, sigma)
learns that velocity by regression (`flow_matching_loss`); its average over all lines through a
point is a velocity field whose ODE carries noise to data. Sampling is Euler on that ODE from
sigma = 1 down to 0 (`flow_euler_step`), on the grid of diffusers' `FlowMatchEulerDiscreteScheduler`
(`flow_sigmas`). The closer the learnt paths are to straight, the fewer Euler steps they need.

The network is the book's latent UNet, called with t = 1000 sigma as its timestep. Guidance
combines the two velocities as it combines two noise predictions (`guidance.CFGDenoiser`).

Notation: B batch, x latents (B, 4, 8, 8), sigma (B,) in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffusion_notes.foundations.guidance import CFGDenoiser, drop_condition
from diffusion_notes.stable_diffusion.ldm import P_UNCOND

T_SCALE = 1000.0  # the UNet's timestep is 1000 sigma, as SD3's transformer is called


def linear_path(x0: torch.Tensor, x1: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""x_sigma = (1 - sigma) x_0 + sigma x_1, sigma (B,) broadcast over the rest.

    $$x_\sigma = (1-\sigma)\,x_0 + \sigma\,x_1$$

    Book: eq-linear-path
    Paper: Liu et al. 2022 (rectified flow), eq. 1; Esser et al. 2024 (SD3), eq. 3 with a = 1 - t, b = t
    """
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0)
    return (1 - s) * x0 + s * x1


def flow_matching_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None, cond=None,
                       sigma: torch.Tensor | None = None, x1: torch.Tensor | None = None) -> torch.Tensor:
    r"""The conditional flow-matching loss: regress the straight line's velocity x_1 - x_0.

    $$\mathcal L_\text{CFM} = \mathbb E_{\sigma\sim U(0,1),\,x_0,\,x_1\sim\mathcal N(0,I)}
      \left\| v_\theta(x_\sigma, \sigma) - (x_1 - x_0) \right\|^2$$

    sigma ~ U(0, 1) and x_1 ~ N(0, I) are drawn from `generator` unless given (a reflow round gives
    x_1 paired with its own x_0). The model is called as model(x_sigma, 1000 sigma, cond).

    Book: eq-flow-matching
    Paper: Lipman et al. 2022, eq. 23; Liu et al. 2022, eq. 1
    """
    B, device = x0.shape[0], x0.device
    if sigma is None:
        sigma = torch.rand(B, generator=generator).to(device)
    if x1 is None:
        x1 = torch.randn(x0.shape, generator=generator).to(device)
    x = linear_path(x0, x1, sigma)
    v = model(x, sigma * T_SCALE, cond) if cond is not None else model(x, sigma * T_SCALE)
    return nn.functional.mse_loss(v, x1 - x0)


def flow_loss(model, batch: dict, generator: torch.Generator | None = None, *, null: torch.Tensor,
              p_uncond: float = P_UNCOND) -> torch.Tensor:
    """`flow_matching_loss` on a latent batch ({"z0", "context"}), the caption dropped with probability p_uncond."""
    device = next(model.parameters()).device
    context = drop_condition(batch["context"].to(device), p_uncond, null.to(device), generator)
    return flow_matching_loss(model, batch["z0"].to(device), generator, context, x1=batch.get("x1"))


def shift_sigma(sigma, shift: float = 1.0):
    r"""SD3's timestep shift, sigma -> s sigma / (1 + (s - 1) sigma): s > 1 spends more steps at high noise.

    $$\sigma' = \frac{s\,\sigma}{1 + (s - 1)\,\sigma}$$

    Paper: Esser et al. 2024 (SD3), section 5.3.2 (resolution-dependent shifting), with s = sqrt(m / n)
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(n: int, shift: float = 1.0, T: int = 1000) -> torch.Tensor:
    r"""The n + 1 noise levels Euler visits, from 1 down to 0: diffusers' `FlowMatchEulerDiscreteScheduler`.

    n levels evenly spaced from 1 down to the scheduler's smallest training level, each shifted
    (`shift_sigma`; SD3 samples with s = 3), then a final 0. As diffusers' scheduler does it, that
    smallest level is itself already shifted, shift_sigma(1 / T) (float32), so the last of the n
    levels is shifted twice: 0.001 for s = 1, but 0.00893 rather than 0.00299 for s = 3.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise ValueError(f"the number of steps must be an int between 1 and {T}, got {n!r}")
    sigma_min = float(shift_sigma(torch.tensor(1.0 / T, dtype=torch.float32), shift))  # the training grid's lowest
    sigmas = np.linspace(1.0, sigma_min, n)  # (n,) float64, as diffusers: timesteps / T
    sigmas = shift_sigma(sigmas, shift).astype(np.float32)
    return torch.cat([torch.from_numpy(sigmas), torch.zeros(1)])  # (n + 1,)


def flow_euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    r"""One Euler step of the flow ODE, dx/dsigma = v: x_{sigma'} = x_sigma + (sigma' - sigma) v.

    $$x_{\sigma_{i+1}} = x_{\sigma_i} + (\sigma_{i+1} - \sigma_i)\,v_\theta(x_{\sigma_i}, \sigma_i)$$

    Book: eq-flow-euler
    Paper: Liu et al. 2022, section 2.1 (the Euler discretisation)
    """
    return x + (sigma_next - sigma) * v


def uniform_flow_sigmas(n: int, shift: float = 1.0) -> torch.Tensor:
    """n + 1 levels 1, 1 - 1/n, ..., 1/n, 0, each shifted (`shift_sigma`): every one of the n steps moves.

    diffusers' grid (`flow_sigmas`) puts its n-th level at its smallest training level (1/T without a
    shift), so its last step only goes from there to 0: n steps do the work of about n - 1, and 2
    steps that of 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps must be a positive int, got {n!r}")
    return shift_sigma(torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), shift).to(torch.float32)  # (n + 1,)


FLOW_GRIDS = {"diffusers": flow_sigmas, "uniform": uniform_flow_sigmas}


@torch.no_grad()
def flow_sample(model, x1: torch.Tensor, n: int, *, cond=None, uncond=None, guidance_scale: float = 1.0,
                shift: float = 1.0, grid: str = "diffusers", callback=None) -> torch.Tensor:
    """x_0 from noise x1 (B, ...) in n Euler steps of the (guided) velocity field; `callback(i, sigma, x)`.

    `grid` is "diffusers" (`flow_sigmas`, FlowMatchEulerDiscreteScheduler's) or "uniform" (`uniform_flow_sigmas`).
    """
    if grid not in FLOW_GRIDS:
        raise ValueError(f"grid must be one of {', '.join(FLOW_GRIDS)}, got {grid!r}")
    model = CFGDenoiser(model, cond, uncond, guidance_scale)  # model(x, t) -> guided v
    sigmas = FLOW_GRIDS[grid](n, shift).tolist()
    x = x1
    for i in range(n):
        t = torch.full((x.shape[0],), sigmas[i] * T_SCALE, device=x.device)  # (B,) float
        if callback is not None:
            callback(i, sigmas[i], x)
        x = flow_euler_step(x, model(x, t), sigmas[i], sigmas[i + 1])
    return x
