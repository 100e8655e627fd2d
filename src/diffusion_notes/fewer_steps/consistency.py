r"""Latent consistency distillation (Luo et al. 2023): teach a UNet to jump from any x_t to x_0.

The teacher is the shipped latent UNet, guided at the book's scale. Its probability-flow ODE
carries each x_t to one x_0; a consistency function f(x_t, t) returns that x_0 from any point of
the path, so f must agree with itself along the path. Distillation enforces this between two
neighbours on DDIM's 50-step grid (skip k = 20 timesteps): the student at t_{n+k}, and its
slowly moving copy (an EMA "target", no gradient) at the point one teacher DDIM step below,

    L_CD = E || f_theta(z_{t_{n+k}}, t_{n+k}, c) - f_theta^-(z^Psi_{t_n}, t_n, c) ||^2

with z^Psi_{t_n} the guided teacher's DDIM step from z_{t_{n+k}} (`teacher_step`). The boundary
condition f(x, 0) = x is built into f through c_skip and c_out (`samplers.lcm.lcm_boundary`),
so the chain of equalities is anchored at the data.

Guidance is folded in at a fixed scale: the teacher's step is guided at w = 4 (the book's
default), so the student draws guided pictures with one call per step and no empty caption.

Notation: B batch, z latents (B, 4, 8, 8), context (B, 77, D_c), t timesteps (B,) long.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_notes.foundations.guidance import cfg_combine
from diffusion_notes.foundations.samplers.lcm import lcm_boundary, lcm_origin_timesteps
from diffusion_notes.foundations.schedules import Schedule, expand_like
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE

SKIP = 20  # k: timesteps between the two ends of one consistency pair (T // 50)
TARGET_DECAY = 0.95  # LCM's EMA rate for the target network


def consistency_function(unet, z_t, t, context, schedule: Schedule) -> torch.Tensor:
    r"""f_theta(z_t, t, c) = c_skip(t) z_t + c_out(t) x0_hat(z_t, eps_theta(z_t, t, c)), (B, 4, 8, 8).

    $$f_\theta(z_t, t) = c_\text{skip}(t)\,z_t + c_\text{out}(t)\,
      \frac{z_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(z_t, t)}{\sqrt{\bar\alpha_t}}$$

    Book: eq-consistency-function
    Paper: Luo et al. 2023 (LCM), eq. 9
    """
    a = expand_like(schedule.alphas_cumprod.to(z_t.device, torch.float32)[t], z_t)  # (B, 1, 1, 1)
    c_skip, c_out = (expand_like(c.to(z_t.device, torch.float32), z_t) for c in lcm_boundary(t.cpu()))
    eps = unet(z_t, t, context)
    return c_skip * z_t + c_out * (z_t - (1 - a).sqrt() * eps) / a.sqrt()


@torch.no_grad()
def teacher_step(teacher, z_t, t, t_prev, context, null, schedule: Schedule,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> torch.Tensor:
    r"""z^Psi_{t_prev}: one guided DDIM step of the frozen teacher from (z_t, t) to t_prev, (B, 4, 8, 8).

    $$z^\Psi_{t_n} = \sqrt{\bar\alpha_{t_n}}\,\hat x_0^w + \sqrt{1-\bar\alpha_{t_n}}\,\hat\epsilon^w,\qquad
      \hat\epsilon^w = \epsilon(z, t, \varnothing) + w\,(\epsilon(z, t, c) - \epsilon(z, t, \varnothing))$$

    (x0_hat^w is the guided eps's x_0.) One call on 2B examples gives both predictions.

    Book: eq-teacher-step
    Paper: Luo et al. 2023, eq. 8 (the augmented PF-ODE solved by DDIM)
    """
    B = z_t.shape[0]
    eps = teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([context, null.expand_as(context)]))
    eps = cfg_combine(eps[B:], eps[:B], guidance_scale)  # (B, 4, 8, 8)
    alpha_bar = schedule.alphas_cumprod.to(z_t.device, torch.float32)
    a, a_prev = expand_like(alpha_bar[t], z_t), expand_like(alpha_bar[t_prev], z_t)
    x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def consistency_pairs(B: int, generator: torch.Generator | None, T: int = 1000, skip: int = SKIP):
    """(t_{n+k}, t_n), (B,) long each: a random point of the 50-step grid and the point k below (0 at the bottom)."""
    grid = torch.from_numpy(lcm_origin_timesteps(T, T // skip))  # (50,) 19, 39, ..., 999
    index = torch.randint(0, len(grid), (B,), generator=generator)
    start = grid[index]
    return start, (start - skip).clamp(min=0)


def consistency_distillation_loss(student, target, teacher, z0, context, null, schedule: Schedule,
                                  generator: torch.Generator | None = None,
                                  guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> torch.Tensor:
    r"""L_CD on one batch: latents z0 (B, 4, 8, 8), caption states (B, 77, D_c), null = tau("") (77, D_c).

    $$\mathcal L_\text{CD} = \mathbb E\left[\left\| f_\theta(z_{t_{n+k}}, t_{n+k}, c)
      - f_{\theta^-}(z^\Psi_{t_n}, t_n, c)\right\|^2\right]$$

    `target` is the EMA copy theta^- (or `student` itself under no_grad: LCM-LoRA's choice).

    Book: eq-lcm-loss
    Paper: Luo et al. 2023, eq. 10 and Algorithm 1
    """
    device = z0.device
    t, t_prev = consistency_pairs(z0.shape[0], generator, schedule.num_train_timesteps)
    eps = torch.randn(z0.shape, generator=generator).to(device)  # (B, 4, 8, 8)
    t, t_prev = t.to(device), t_prev.to(device)
    a = expand_like(schedule.alphas_cumprod.to(device, torch.float32)[t], z0)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps  # q(z_t | z_0) at t_{n+k}
    z_prev = teacher_step(teacher, z_t, t, t_prev, context, null.to(device), schedule, guidance_scale)
    with torch.no_grad():
        goal = consistency_function(target, z_prev, t_prev, context, schedule)
    return nn.functional.mse_loss(consistency_function(student, z_t, t, context, schedule), goal)


@torch.no_grad()
def update_target(target: nn.Module, student: nn.Module, decay: float = TARGET_DECAY) -> None:
    """theta^- <- decay theta^- + (1 - decay) theta: the target follows the student slowly."""
    for p_target, p in zip(target.parameters(), student.parameters()):
        p_target.lerp_(p, 1.0 - decay)
