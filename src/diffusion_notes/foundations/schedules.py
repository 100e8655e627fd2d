"""Noise schedules: how much noise is added at each of the T forward steps.

Notation (code name -> paper symbol):

    betas           beta_t        variance added by forward step t
    alphas          alpha_t       1 - beta_t
    alphas_cumprod  alpha_bar_t   prod_{s<=t} alpha_s, the signal kept after t steps
    snr             SNR(t)        alpha_bar_t / (1 - alpha_bar_t)
    sigmas          sigma_t       sqrt((1 - alpha_bar_t) / alpha_bar_t) (Karras et al.)

Timesteps are indexed from 0 in code: code step t is paper step t + 1, so
`alphas_cumprod[0] = 1 - betas[0]` and `alphas_cumprod[T - 1]` is the last,
noisiest step. Everything is kept in float64 on the CPU; `broadcast_at` picks
values for a batch and moves them to the data's dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")
_DEFAULT_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


# --- one function per equation ---------------------------------------------------


def linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
    r"""The DDPM schedule: betas evenly spaced from `beta_start` to `beta_end`.

    $$\beta_t = \beta_1 + \frac{t - 1}{T - 1}(\beta_T - \beta_1)$$

    Book: eq-linear-schedule
    Paper: Ho et al. 2020, Sec. 4 (beta_1 = 1e-4, beta_T = 0.02, T = 1000)
    """
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)  # (T,)


def scaled_linear_betas(
    num_train_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
):
    r"""The Stable Diffusion schedule: sqrt(beta) evenly spaced, then squared.

    $$\beta_t = \left(\sqrt{\beta_1} + \frac{t - 1}{T - 1}\left(\sqrt{\beta_T} - \sqrt{\beta_1}\right)\right)^2$$

    Book: eq-scaled-linear-schedule
    Paper: Rombach et al. 2022 (the released models' configuration; not an equation in the paper)
    """
    sqrt_betas = torch.linspace(
        math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=torch.float64
    )  # (T,)
    return sqrt_betas**2


def cosine_alpha_bar(t, num_train_timesteps: int, s: float = 0.008):
    r"""The cosine schedule's alpha_bar at (paper) time t in [0, T], t may be a tensor.

    $$\bar\alpha_t = \frac{f(t)}{f(0)}, \qquad
      f(t) = \cos^2\!\left(\frac{t / T + s}{1 + s} \cdot \frac{\pi}{2}\right)$$

    Book: eq-cosine-schedule
    Paper: Nichol & Dhariwal 2021, eq. 17
    """
    t = torch.as_tensor(t, dtype=torch.float64)

    def f(u):
        return torch.cos((u / num_train_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    return f(t) / f(torch.zeros((), dtype=torch.float64))


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999):
    r"""Betas of the cosine schedule, clipped at `max_beta` so the last step is not singular.

    $$\beta_t = \min\left(1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}},\ 0.999\right)$$

    Book: eq-cosine-betas
    Paper: Nichol & Dhariwal 2021, Sec. 3.2 (diffusers' "squaredcos_cap_v2")
    """
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64)  # (T + 1,)
    alpha_bar = cosine_alpha_bar(steps, num_train_timesteps, s)  # (T + 1,)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]  # (T,)
    return betas.clamp(max=max_beta)


def alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    r"""The signal kept after t forward steps.

    $$\bar\alpha_t = \prod_{s=1}^{t} (1 - \beta_s)$$

    Book: eq-alpha-bar
    Paper: Ho et al. 2020, Sec. 2 (just above eq. 4)
    """
    return torch.cumprod(1 - betas, dim=0)  # (T,)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    r"""Signal-to-noise ratio of x_t.

    $$\mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t}$$

    Book: eq-snr
    Paper: Kingma et al. 2021 (Variational Diffusion Models), eq. 2
    """
    return alpha_bar / (1 - alpha_bar)


def sigmas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    r"""The noise level of the variance-exploding view, x_t / sqrt(alpha_bar_t) = x0 + sigma_t eps.

    $$\sigma_t = \sqrt{\frac{1 - \bar\alpha_t}{\bar\alpha_t}}$$

    Book: eq-sigma-from-alpha-bar
    Paper: Karras et al. 2022, Sec. 2 and Table 1 (VP column)
    """
    return ((1 - alpha_bar) / alpha_bar).sqrt()


# --- the schedule object ---------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Schedule:
    """A noise schedule: betas, alphas and alphas_cumprod, each a (T,) float64 tensor."""

    kind: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def __post_init__(self):
        shapes = {self.betas.shape, self.alphas.shape, self.alphas_cumprod.shape}
        if len(shapes) != 1 or self.betas.ndim != 1:
            raise ValueError(
                "betas, alphas and alphas_cumprod must all have shape (T,), got "
                f"{tuple(self.betas.shape)}, {tuple(self.alphas.shape)}, "
                f"{tuple(self.alphas_cumprod.shape)}"
            )

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]

    def _at(self, values: torch.Tensor, t) -> torch.Tensor:
        if t is None:
            return values
        return values[check_timestep_tensor(t, self.num_train_timesteps)]

    def alpha_bar(self, t=None) -> torch.Tensor:
        """alpha_bar_t at int or (B,) timesteps t; all T values if t is None."""
        return self._at(self.alphas_cumprod, t)

    def snr(self, t=None) -> torch.Tensor:
        """alpha_bar_t / (1 - alpha_bar_t) at t (see `snr`); all T values if t is None."""
        return self._at(snr(self.alphas_cumprod), t)

    def log_snr(self, t=None) -> torch.Tensor:
        """log SNR(t), the quantity Kingma et al. call lambda_t; all T values if t is None."""
        return self._at(torch.log(snr(self.alphas_cumprod)), t)

    def sigmas(self) -> torch.Tensor:
        """Karras/k-diffusion sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for all T steps, (T,)."""
        return sigmas_from_alpha_bar(self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"Schedule(kind={self.kind!r}, num_train_timesteps={self.num_train_timesteps})"


def make_schedule(
    kind: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> Schedule:
    """Build a `Schedule` of the given kind ("linear", "scaled_linear" or "cosine").

    Defaults: linear 1e-4..0.02 (DDPM), scaled_linear 0.00085..0.012 (Stable
    Diffusion), cosine with s = 0.008 and betas clipped at 0.999 (the same
    numbers as diffusers' `beta_schedule="squaredcos_cap_v2"`).
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SCHEDULE_KINDS)}, got {kind!r}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
        raise ValueError(f"num_train_timesteps must be an int, got {num_train_timesteps!r}")
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be at least 1, got {num_train_timesteps}")
    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError(
                "beta_start and beta_end do not apply to the cosine schedule, "
                f"got beta_start={beta_start}, beta_end={beta_end}"
            )
        betas = cosine_betas(num_train_timesteps)
    else:
        default_start, default_end = _DEFAULT_BETAS[kind]
        beta_start = default_start if beta_start is None else float(beta_start)
        beta_end = default_end if beta_end is None else float(beta_end)
        for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not 0 < beta < 1:
                raise ValueError(f"{name} must be in (0, 1), got {beta}")
        if beta_start > beta_end:
            raise ValueError(
                f"beta_start must be <= beta_end, got beta_start={beta_start}, beta_end={beta_end}"
            )
        make_betas = linear_betas if kind == "linear" else scaled_linear_betas
        betas = make_betas(num_train_timesteps, beta_start, beta_end)
    return Schedule(
        kind=kind, betas=betas, alphas=1 - betas, alphas_cumprod=alpha_bar_from_betas(betas)
    )


# --- picking values for a batch ---------------------------------------------------


def check_timestep_tensor(t, num_train_timesteps: int) -> torch.Tensor:
    """Integer timesteps as a long tensor on the CPU: an int gives shape (), a tensor keeps its shape.

    Raises ValueError unless every t is an integer in [0, T - 1].
    """
    if isinstance(t, bool):
        raise ValueError(f"t must be integers in [0, {num_train_timesteps - 1}], got {t!r}")
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(
                f"t must be integers in [0, {num_train_timesteps - 1}], got a {t.dtype} tensor"
            )
        if t.ndim > 1:
            raise ValueError(f"t must be an int or a (B,) tensor, got shape {tuple(t.shape)}")
        t_cpu = t.detach().to("cpu", torch.long)
    elif isinstance(t, int):
        t_cpu = torch.tensor(t, dtype=torch.long)
    else:
        raise ValueError(
            f"t must be an int or a (B,) long tensor, got {type(t).__name__} {t!r}"
        )
    if t_cpu.numel() and (t_cpu.min() < 0 or t_cpu.max() >= num_train_timesteps):
        shown = t_cpu.tolist() if t_cpu.numel() <= 8 else f"values in [{t_cpu.min()}, {t_cpu.max()}]"
        raise ValueError(f"t must be integers in [0, {num_train_timesteps - 1}], got {shown}")
    return t_cpu


def expand_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values, () or (B,), to (B, 1, ..., 1) with `like`'s ndim, dtype and device."""
    values = values.reshape(-1)  # (B,) or (1,)
    if values.shape[0] not in (1, like.shape[0] if like.ndim else 1):
        raise ValueError(
            f"got {values.shape[0]} timesteps for a batch of {like.shape[0]}; "
            "t must be an int or have one entry per example"
        )
    shape = (values.shape[0],) + (1,) * (like.ndim - 1)
    return values.reshape(shape).to(device=like.device, dtype=like.dtype)  # (B, 1, ..., 1)


def broadcast_at(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """Gather values[t] for an int or (B,) long tensor t and shape it (B, 1, ..., 1) like `like`.

    The gather happens on the CPU in the values' dtype (float64 for a
    `Schedule`); only the result is cast to `like`'s dtype and moved to its device.
    """
    t = check_timestep_tensor(t, values.shape[0])
    return expand_like(values[t], like)  # (B, 1, ..., 1)
