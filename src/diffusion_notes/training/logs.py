"""A run's logs: losses.csv (step, loss, seconds) and the loss curve loss.png, rewritten with each checkpoint."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import torch

from diffusion_notes.run_files import atomic_write_bytes

PLOT_EVERY_S = 30.0  # redraw loss.png at a checkpoint at most this often (always at the end)


def write_loss_log(run_dir: Path, losses: list[float], seconds: list[float], plot: bool = True) -> None:
    """losses.csv (step,loss,seconds) and, if `plot`, the loss curve loss.png."""
    rows = ["step,loss,seconds"] + [f"{i},{loss!r},{s:.3f}" for i, (loss, s) in enumerate(zip(losses, seconds))]
    atomic_write_bytes(run_dir / "losses.csv", ("\n".join(rows) + "\n").encode())
    if plot and losses:
        _plot_losses(run_dir / "loss.png", losses)


class LossLog:
    """The logs of `run_dir`: the CSV every time, the picture at most every PLOT_EVERY_S seconds and at the end."""

    def __init__(self, run_dir: Path):
        self.run_dir, self._last_plot = run_dir, -math.inf

    def write(self, losses: list[float], seconds: list[float], last: bool = False) -> None:
        plot = last or time.perf_counter() - self._last_plot > PLOT_EVERY_S
        write_loss_log(self.run_dir, losses, seconds, plot=plot)
        if plot:
            self._last_plot = time.perf_counter()


def _plot_losses(path: Path, losses: list[float]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.95)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(losses, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(losses) // 50)
    if len(losses) > k:
        smooth = torch.tensor(losses).unfold(0, k, 1).mean(1).tolist()  # moving average over k steps
        ax.plot(range(k - 1, len(losses)), smooth, lw=1.5, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", yscale="log" if min(losses) > 0 else "linear")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
