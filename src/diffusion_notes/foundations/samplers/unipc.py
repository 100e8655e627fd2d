r"""UniPC: a unified predictor-corrector multistep solver, web-UI "UniPC".

Each call first corrects the point the last step predicted, using the model's output there
(UniC, no extra model call), then predicts the next point from the corrected one (UniP).
Covered: diffusers' `UniPCMultistepScheduler` default configuration (solver_order 2, bh2,
predict_x0, lower_order_final, no disabled correctors, final_sigmas_type "zero"), on its grid
(`dpmpp_2m_sde.multistep_grid`), with SD 1.x's betas and with Karras sigmas. With bh2 the
predictor UniP-2 is DPM-Solver++(2M)'s step.

Notation (VP, as DPM-Solver writes it): alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar),
lambda = log(alpha_t / sigma_t) = -log(sigma), h = lambda_{t'} - lambda_t, m = x0_hat (the data
prediction), and B(h) = e^{-h} - 1 ("bh2").

Orders at step i of n (diffusers' warm-up and lower_order_final): the predictor is first order at
i = 0 and i = n - 1, second order between; the corrector (from i = 1 on) is first order at i = 1,
second order after.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from diffusion_notes.foundations.grids import Grid
from diffusion_notes.foundations.samplers.base import Sampler, register
from diffusion_notes.foundations.samplers.common import StepOutput
from diffusion_notes.foundations.samplers.dpmpp_2m_sde import (
    log_snr_steps,
    multistep_grid,
)
from diffusion_notes.foundations.sigmas import vp_scale


def corrector_rhos(h: torch.Tensor, r: torch.Tensor):
    r"""UniC-2's weights (rho_1 on D_1, rho_t on m_t - m_s) for a step of size h, with B(h) = e^{-h} - 1.

    $$\begin{pmatrix}1 & 1\\ r & 1\end{pmatrix}\begin{pmatrix}\rho_1\\ \rho_t\end{pmatrix}
      = \begin{pmatrix}b_1\\ b_2\end{pmatrix}, \qquad
      b_k = \frac{k!\,\hat h\,\varphi_{k+1}(\hat h)}{B(h)}, \quad \hat h = -h$$

    with phi_1(x) = (e^x - 1) / x, phi_{k+1}(x) = (phi_k(x) - 1 / k!) / x and r = (lambda_{s_1} -
    lambda_s) / h the previous point's offset, elementwise on float64 tensors.

    Paper: Zhao et al. 2023 (UniPC), the corrector UniC-p's linear system, B_2(h) = e^h - 1 in their sign of h
    """
    h_hat = -h
    phi_1 = torch.expm1(h_hat) / h_hat
    phi_2 = (phi_1 - 1) / h_hat
    phi_3 = (phi_2 - 0.5) / h_hat
    B = torch.expm1(h_hat)
    b1, b2 = h_hat * phi_2 / B, 2 * h_hat * phi_3 / B
    rho_1 = (b1 - b2) / (1 - r)
    return rho_1, b1 - rho_1


class UniPCCoefficients(NamedTuple):
    alpha: torch.Tensor  # alpha_t at this call's point, for x0_hat
    sigma_vp: torch.Tensor  # sigma_t there
    ratio_p: torch.Tensor  # predictor: sigma_{t'} / sigma_t
    alpha_phi_p: torch.Tensor  # alpha_{t'} (e^{-h} - 1), h to the next point
    alpha_B_p: torch.Tensor  # alpha_{t'} B(h)
    rho_p: torch.Tensor  # 1/2 for UniP-2, 0 for first order
    r_p: torch.Tensor  # (lambda_{s_1} - lambda_t) / h, the previous point's offset
    correct: torch.Tensor  # bool: correct this point first (every call but the first)
    ratio_c: torch.Tensor  # corrector: sigma_t / sigma_s, s the previous point
    alpha_phi_c: torch.Tensor  # alpha_t (e^{-h} - 1), h from the previous point
    alpha_B_c: torch.Tensor  # alpha_t B(h)
    rho_c: torch.Tensor  # the weight on D_1 (0 for UniC-1)
    rho_t: torch.Tensor  # the weight on m_t - m_s (1/2 for UniC-1)
    r_c: torch.Tensor  # (lambda_{s_1} - lambda_s) / h


def unipc_coefficients(grid: Grid, schedule=None, **_) -> UniPCCoefficients:
    """`unipc_update`'s coefficients at each of the grid's n steps, (n,) float64 tensors."""
    sigmas = grid.sigmas  # (n + 1,)
    n = len(sigmas) - 1
    _, h, r = log_snr_steps(sigmas)  # (n,) each: h_i to the next point, r_i = h_{i-1} / h_i
    alpha = vp_scale(sigmas)  # (n + 1,)
    sigma_vp = sigmas * alpha
    i = torch.arange(n)
    second_p = (i > 0) & (i < n - 1)  # UniP-2 between the first and the last step
    r_p = -r  # (lambda_{i-1} - lambda_i) / h_i
    # the corrector at point i looks back over step i - 1: h_{i-1}, and r_{i-1} for its own history
    h_c, r_c = torch.cat([h[:1], h[:-1]]), -torch.cat([r[:1], r[:-1]])  # (n,), index 0 unused
    rho_c, rho_t = corrector_rhos(h_c, r_c)
    first_c = i == 1  # UniC-1 right after the first step
    rho_c, rho_t = torch.where(first_c, 0.0, rho_c), torch.where(first_c, 0.5, rho_t)
    alpha_c = alpha[:-1]  # alpha at point i
    phi_p, phi_c = torch.expm1(-h), torch.expm1(-h_c)  # e^{-h} - 1 = B(h) ("bh2")
    return UniPCCoefficients(
        alpha[:-1], sigma_vp[:-1], sigma_vp[1:] / sigma_vp[:-1], alpha[1:] * phi_p, alpha[1:] * phi_p,
        torch.where(second_p, 0.5, 0.0), r_p, i > 0,
        sigma_vp[:-1] / torch.cat([sigma_vp[:1], sigma_vp[:-2]]), alpha_c * phi_c, alpha_c * phi_c,
        rho_c, rho_t, r_c)


def unipc_corrector(x_s, m_t, m_s, m_s1, c: UniPCCoefficients):
    r"""UniC: the point x_t the last step predicted, corrected with the model's m_t there.

    $$x^c_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t(e^{-h} - 1)\, m_s
              - \alpha_t B(h)\left(\rho_1 D_1 + \rho_t (m_t - m_s)\right), \qquad
      D_1 = \frac{m_{s_1} - m_s}{r}$$

    x_s the (corrected) point the last step started from, m_s and m_{s_1} the data predictions
    there and one step before, rho from `corrector_rhos` (UniC-1: rho_1 = 0, rho_t = 1/2).

    Paper: Zhao et al. 2023 (UniPC), the unified corrector UniC-p (p = 1, 2), data-prediction form
    """
    correction = c.rho_t * (m_t - m_s)  # (B, ...)
    if c.rho_c != 0:
        correction = correction + c.rho_c * (m_s1 - m_s) / c.r_c
    return c.ratio_c * x_s - c.alpha_phi_c * m_s - c.alpha_B_c * correction


def unipc_predictor(x_t, m_t, m_s1, c: UniPCCoefficients):
    r"""UniP: the next point from the corrected x_t, with (UniP-2) the last data prediction.

    $$x_{t'} = \frac{\sigma_{t'}}{\sigma_t} x_t - \alpha_{t'}(e^{-h} - 1)\, m_t
               - \alpha_{t'} B(h)\,\rho\, D_1, \qquad D_1 = \frac{m_{s_1} - m_t}{r}, \quad \rho = \tfrac12$$

    (rho = 0 for UniP-1). With B(h) = e^{-h} - 1 this is DPM-Solver++(2M)'s step.

    Paper: Zhao et al. 2023 (UniPC), the unified predictor UniP-p (p = 1, 2), data-prediction form
    """
    x_next = c.ratio_p * x_t - c.alpha_phi_p * m_t  # (B, ...)
    if c.rho_p != 0:
        x_next = x_next - c.alpha_B_p * c.rho_p * (m_s1 - m_t) / c.r_p
    return x_next


def unipc_update(x_t, eps, c: UniPCCoefficients, *, noise=None, clip_x0=None, state=None) -> StepOutput:
    r"""One UniPC call: correct x_t (UniC), then predict the next point from it (UniP).

    $$m_t = \hat x_0 = \frac{x_t - \sigma_t\,\epsilon_\theta}{\alpha_t}, \qquad
      x^c_t = \mathrm{UniC}(x_s, m_s, m_{s_1}, m_t), \qquad x_{t'} = \mathrm{UniP}(x^c_t, m_t, m_s)$$

    The model sees the predicted x_t, never the corrected one: the correction is free. `state`
    keeps x^c and the last two m between calls; without it there is no correction and every step
    is first order. Deterministic; `noise` is ignored. Equals diffusers'
    `UniPCMultistepScheduler.step` (default configuration, see the module) given the same eps.

    Paper: Zhao et al. 2023 (UniPC), multistep UniPC-2, B_2(h) = e^h - 1 in their sign of h, data prediction
    """
    m_t = (x_t - c.sigma_vp * eps) / c.alpha  # (B, ...)
    m_t = m_t if clip_x0 is None else m_t.clamp(-clip_x0, clip_x0)
    history = {} if state is None else state
    m_s, m_s1 = history.get("m", (None, None))
    x = x_t
    if c.correct and m_s is not None:  # a run that starts part-way (img2img) has no m_{s_1} yet: UniC-1
        c_c = c if m_s1 is not None else c._replace(rho_c=0.0, rho_t=0.5)
        x = unipc_corrector(history["x_corrected"], m_t, m_s, m_s1, c_c)
    c_p = c if m_s is not None else c._replace(rho_p=0.0)
    x_next = unipc_predictor(x, m_t, m_s, c_p)
    history["x_corrected"], history["m"] = x, (m_t, m_s)
    return StepOutput(x_next, m_t)


UNIPC = register(Sampler(
    name="unipc",
    make_grid=multistep_grid,
    coefficients=unipc_coefficients,
    update=unipc_update,
    default_spacing="linspace",
    diffusers_class="UniPCMultistepScheduler",
    karras=True,
    webui_names={"UniPC": False},
))
