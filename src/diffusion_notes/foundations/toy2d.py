"""Two-dimensional toy data and a small MLP denoiser that trains in seconds.

Part I of the book studies diffusion where we can see everything: points in the
plane. The data distributions here are known exactly, so sample quality can be
measured against the truth, and the denoiser is small enough to train live in a
chapter on a laptop CPU.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.nn.embeddings import timestep_embedding

# ---------------------------------------------------------------------------
# Data sets. Each returns (N, 2) points with roughly unit spread, and an integer
# label per point (the mixture component or the moon), used for conditioning.


def _gaussian_mixture(n, g, k=8, radius=2.0, std=0.15):
    labels = torch.randint(0, k, (n,), generator=g)  # (N,)
    angle = 2 * math.pi * labels.float() / k  # (N,)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (N, 2)
    return centres + std * torch.randn(n, 2, generator=g), labels


def _two_moons(n, g, noise=0.08):
    labels = torch.randint(0, 2, (n,), generator=g)  # (N,)
    theta = math.pi * torch.rand(n, generator=g)  # (N,)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)  # (N, 2)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)  # (N, 2)
    x = torch.where(labels[:, None] == 0, upper, lower)
    x = x + noise * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.5, labels


def _swiss_roll(n, g, noise=0.05):
    u = torch.rand(n, generator=g)  # (N,)
    theta = 1.5 * math.pi * (1 + 2 * u)  # (N,)
    x = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 5.0  # (N, 2)
    labels = (u > 0.5).long()  # inner and outer half of the roll
    return x + noise * torch.randn(n, 2, generator=g), labels


def _checkerboard(n, g):
    cell = torch.randint(0, 8, (n,), generator=g)  # 8 dark cells of a 4x4 board
    row, col = cell // 2, 2 * (cell % 2) + (cell // 2) % 2
    corner = torch.stack([col.float(), row.float()], dim=1) - 2.0  # (N, 2)
    return corner + torch.rand(n, 2, generator=g), (row >= 2).long()


TOY_DATASETS = {
    "gaussian_mixture": (_gaussian_mixture, 8),
    "two_moons": (_two_moons, 2),
    "swiss_roll": (_swiss_roll, 2),
    "checkerboard": (_checkerboard, 2),
}


def num_classes(name: str) -> int:
    """Number of distinct labels the data set ``name`` returns."""
    _check_name(name)
    return TOY_DATASETS[name][1]


def _check_name(name):
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; known ones: {', '.join(TOY_DATASETS)}")


def sample_toy(name: str, n: int, generator: torch.Generator | None = None, with_labels: bool = False):
    """Draw ``n`` points from the toy distribution ``name``.

    Returns an (N, 2) float32 tensor, or ``(points, labels)`` when ``with_labels``.
    """
    _check_name(name)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    fn, _ = TOY_DATASETS[name]
    x, labels = fn(n, g)
    x = x.float()
    return (x, labels) if with_labels else x


# ---------------------------------------------------------------------------
# The denoiser.


@dataclass
class ToyDenoiserConfig:
    hidden: int = 96  # D, width of every hidden layer
    num_blocks: int = 3  # residual MLP blocks
    time_dim: int = 32  # width of the sinusoidal timestep embedding
    num_classes: int = 0  # > 0 adds a label embedding; index num_classes is "no label"


class ToyDenoiser(nn.Module):
    """eps_theta(x_t, t[, y]): an MLP that predicts the noise in a 2-D point."""

    def __init__(self, config: ToyDenoiserConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else ToyDenoiserConfig()
        D = config.hidden
        self.in_proj = nn.Linear(2, D)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.label_emb = nn.Embedding(config.num_classes + 1, D) if config.num_classes > 0 else None
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D)) for _ in range(config.num_blocks)
        )
        self.out = nn.Sequential(nn.LayerNorm(D), nn.SiLU(), nn.Linear(D, 2))

    @property
    def null_label(self) -> int:
        """The label index that means "unconditional" (used by guidance)."""
        return self.config.num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x_t.ndim != 2 or x_t.shape[1] != 2:
            raise ValueError(f"x_t must have shape (B, 2), got {tuple(x_t.shape)}")
        h = self.in_proj(x_t) + self.time_mlp(timestep_embedding(t, self.config.time_dim))  # (B, D)
        if self.label_emb is not None:
            if cond is None:
                cond = torch.full(t.shape, self.null_label, dtype=torch.long, device=t.device)  # t may be float
            h = h + self.label_emb(cond)  # (B, D)
        elif cond is not None:
            raise ValueError("this denoiser was built with num_classes=0 and takes no condition")
        for block in self.blocks:
            h = h + block(h)  # (B, D)
        return self.out(h)  # (B, 2)


def train_toy_denoiser(
    data: torch.Tensor,
    schedule: Schedule,
    config: ToyDenoiserConfig | None = None,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    p_uncond: float = 0.0,
):
    """Train a ToyDenoiser with the noise-prediction loss on the points ``data`` (N, 2).

    With ``labels`` (N,) the model is conditional; each label is replaced by the
    null label with probability ``p_uncond`` (condition dropout, for guidance).
    Returns ``(model, losses, seconds)``; ``losses`` holds one float per step.
    """
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"data must have shape (N, 2), got {tuple(data.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # parameter initialisation
    model = ToyDenoiser(config)

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=g)  # (B,)
        cond = None
        if labels is not None:
            cond = labels[idx].clone()  # (B,)
            drop = torch.rand(batch_size, generator=g) < p_uncond
            cond[drop] = model.null_label
        return noise_prediction_loss(model, data[idx], schedule, generator=g, cond=cond)

    losses, seconds = fit_toy(model, batch_loss, steps, lr)
    return model, losses, seconds


def fit_toy(model: nn.Module, batch_loss: Callable[[], torch.Tensor], steps: int, lr: float) -> tuple[list[float], float]:
    """The toy trainers' optimisation: `steps` AdamW steps on `batch_loss()` (a fresh batch's loss each call),
    the learning rate decayed by a cosine to 5% of `lr`. Leaves the model in eval mode.

    Returns ``(losses, seconds)``, one float per step.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses, time.perf_counter() - start
