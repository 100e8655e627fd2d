"""One training loop for every model in the book.

`train("toy2d")` reads the model's recipe (see `recipes.py`), trains with
AdamW, a linear warm-up then a cosine (or constant) learning rate, gradient
clipping and, for diffusion models, an exponential moving average (EMA) of the
weights. Every random number comes from a generator seeded by (seed, step), and
torch's global RNG state is saved too, so a run killed and resumed from its last
checkpoint computes exactly the losses of a run that never stopped.

A run directory holds checkpoint.safetensors (the latest), losses.csv and
loss.png (rewritten with the checkpoints, the picture at most every 30 s),
and model.safetensors (the final weights, EMA ones when there are any).
"""

from __future__ import annotations

import json
import math
import platform
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion_notes import __version__
from diffusion_notes.checkpoint import (
    CHECKPOINT_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    config_from_dict,
    config_to_dict,
    flatten_optimizer_state,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    strip_prefix,
    unflatten_optimizer_state,
    with_prefix,
)
from diffusion_notes.device import default_device, step_generator
from diffusion_notes.training.overrides import apply_overrides, config_diff
from diffusion_notes.training.recipes import Recipe, get_recipe

LR_SCHEDULES = ("cosine", "constant")
PLOT_EVERY_S = 30.0  # redraw loss.png at a checkpoint at most this often (always at the end)


@dataclass
class TrainResult:
    run_dir: Path
    losses: list[float]  # one per step, from step 0
    step: int  # steps done
    finished: bool  # False when max_seconds stopped the run early
    seconds: float  # training time over all sessions of the run
    model: nn.Module | None = field(default=None, repr=False)  # final weights (EMA ones if any), eval mode


def lr_at(step: int, steps: int, lr: float, warmup_steps: int = 0, kind: str = "cosine") -> float:
    """Learning rate at `step`: linear warm-up over `warmup_steps`, then cosine decay to lr/10 (or constant).

    Paper: Loshchilov & Hutter 2017 (SGDR), the cosine schedule
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if kind == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def ema_decay_at(updates: int, decay: float) -> float:
    """The EMA decay after `updates` updates: min(decay, (1 + n) / (10 + n)), so early weights fade fast."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * theta for each floating tensor; other buffers are copied.

    Paper: Ho et al. 2020, Appendix B (EMA of the weights, decay 0.9999)
    """
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            ema[name].lerp_(value, 1.0 - decay)
        else:
            ema[name].copy_(value)


# ---------------------------------------------------------------------------
# Settings of a run: from the arguments, or from the checkpoint on --resume.


def _settings(recipe: Recipe, steps, batch_size, seed, config_overrides, lr_schedule, device) -> dict:
    config = apply_overrides(recipe.config, config_overrides)
    return {
        "recipe": recipe.name,
        "config": config_to_dict(config),
        "config_overrides": config_diff(config, recipe.config),
        "steps": int(steps if steps is not None else recipe.steps),
        "batch_size": int(batch_size if batch_size is not None else recipe.batch_size),
        "seed": int(seed if seed is not None else 0),
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": recipe.warmup_steps,
        "grad_clip": recipe.grad_clip,
        "ema_decay": recipe.ema_decay,
        "lr_schedule": lr_schedule or "cosine",
        "device": str(device),
        "threads": torch.get_num_threads(),  # float sums may differ with another thread count
        "dataset": recipe.dataset,
    }


def _resume_settings(recipe, saved: dict, steps, batch_size, seed, config_overrides, lr_schedule, path) -> dict:
    """The saved settings; any argument given must agree with them."""
    if saved["recipe"] != recipe.name:
        raise ValueError(
            f"{path} is a checkpoint of {saved['recipe']!r}, not {recipe.name!r}; resume it with that model"
        )
    given = {"steps": steps, "batch_size": batch_size, "seed": seed, "lr_schedule": lr_schedule}
    if config_overrides:
        given["config"] = config_to_dict(apply_overrides(recipe.config, config_overrides))
    for key, value in given.items():
        if value is not None and value != saved[key]:
            raise ValueError(
                f"cannot resume {path}: it was started with {key}={saved[key]!r}, now {key}={value!r}. "
                f"Resume with the same settings (or leave them out), or start a new run in another --out directory"
            )
    return saved


def train_command(settings: dict, out_dir) -> str:
    """The command line that starts this run from scratch."""
    words = ["python -m diffusion_notes train", settings["recipe"], "--steps", str(settings["steps"])]
    words += ["--batch-size", str(settings["batch_size"]), "--seed", str(settings["seed"])]
    if settings["lr_schedule"] != "cosine":
        words += ["--lr-schedule", settings["lr_schedule"]]
    for key, value in settings["config_overrides"].items():
        words += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    if "threads" in settings:
        words += ["--threads", str(settings["threads"])]
    return " ".join(words + ["--out", str(out_dir)])


# ---------------------------------------------------------------------------
# Logs.


def write_loss_log(run_dir: Path, losses: list[float], seconds: list[float], plot: bool = True) -> None:
    """losses.csv (step,loss,seconds) and, if `plot`, the loss curve loss.png."""
    rows = ["step,loss,seconds"] + [f"{i},{loss!r},{s:.3f}" for i, (loss, s) in enumerate(zip(losses, seconds))]
    atomic_write_bytes(run_dir / "losses.csv", ("\n".join(rows) + "\n").encode())
    if plot and losses:
        _plot_losses(run_dir / "loss.png", losses)


def _plot_losses(path: Path, losses: list[float]) -> None:
    import io

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


# ---------------------------------------------------------------------------
# Saving and restoring.


def _save(path, model, ema, opt, settings, step, losses, seconds, elapsed) -> None:
    tensors = with_prefix(model.state_dict(), "model")
    if ema is not None:
        tensors.update(with_prefix(ema, "ema"))
    optim_tensors, optim_meta = flatten_optimizer_state(opt.state_dict())
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()  # (N,) uint8
    tensors["log.loss"] = torch.tensor(losses, dtype=torch.float64)
    tensors["log.seconds"] = torch.tensor(seconds, dtype=torch.float64)
    meta = dict(settings, step=step, elapsed_s=elapsed, optimizer=optim_meta, **_provenance())
    save_checkpoint(path, tensors, meta)


def _provenance() -> dict:
    return {
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "diffusion_notes_version": __version__,
        "python_version": platform.python_version(),
    }


def _restore(tensors, meta, model, ema, opt) -> tuple[list[float], list[float]]:
    model.load_state_dict(strip_prefix(tensors, "model"))
    if ema is not None:
        for name, value in strip_prefix(tensors, "ema").items():
            ema[name].copy_(value)
    opt.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    return tensors["log.loss"].tolist(), tensors["log.seconds"].tolist()


def save_weights(path, state: dict[str, torch.Tensor], recipe_name: str, config: dict) -> None:
    """The final weights with {recipe, config} as metadata (what `pretrained` ships)."""
    save_checkpoint(path, state, {"recipe": recipe_name, "config": config})


def build_model(recipe: Recipe, config: dict | object) -> nn.Module:
    """recipe.build on a config given as a dataclass or as a dict."""
    if isinstance(config, dict):
        config = config_from_dict(type(recipe.config), config, source=f"the {recipe.name} config")
    return recipe.build(config)


class _StopFlag:
    """Turns the first Ctrl-C into a request to stop at the end of the current step."""

    def __init__(self):
        self.requested, self._previous = False, None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C interrupts at once

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C raises KeyboardInterrupt as usual
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------------
# The loop.


def _run_settings(recipe, ckpt_path: Path, resume: bool, steps, batch_size, seed, config_overrides, lr_schedule,
                  checkpoint_every: int, device) -> tuple[dict, tuple | None]:
    """The run's settings, checked, and on --resume the checkpoint's (tensors, metadata) to restore."""
    if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {checkpoint_every}")
    saved_state = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}; start the run without --resume")
        saved_state = load_checkpoint(ckpt_path)
        settings = _resume_settings(recipe, saved_state[1], steps, batch_size, seed, config_overrides, lr_schedule,
                                    ckpt_path)
        remove_stale_temporaries(ckpt_path.parent)
    else:
        if ckpt_path.exists():
            raise ValueError(
                f"{ckpt_path} already exists; pass --resume to continue that run, or choose another --out"
            )
        settings = _settings(recipe, steps, batch_size, seed, config_overrides, lr_schedule, device)
    if settings["steps"] < 1 or settings["batch_size"] < 1:
        raise ValueError(f"steps and batch_size must be positive, got {settings['steps']} and {settings['batch_size']}")
    return settings, saved_state


def train(
    recipe: str | Recipe,
    steps: int | None = None,
    batch_size: int | None = None,
    out_dir=None,
    seed: int | None = None,
    resume: bool = False,
    checkpoint_every: int = 500,
    config_overrides=None,
    progress: bool = True,
    max_seconds: float | None = None,
    lr_schedule: str | None = None,
    device=None,
) -> TrainResult:
    """Train the model of `recipe` (a name or a Recipe); see the module docstring.

    `steps`, `batch_size` and `seed` default to the recipe's (seed 0);
    `config_overrides` ({"hidden": 16} or ["hidden=16"]) change the model's
    config. With `resume` the run continues from out_dir/checkpoint.safetensors
    with the saved settings (the optimiser's numbers too, even if the recipe
    changed since). `max_seconds` stops early (after a checkpoint);
    resume later to go on. Runs on `device` (default: `default_device()`, CUDA, then MPS, then CPU);
    the recipe's frozen parts are bound on the same device.
    """
    device = torch.device(device) if device is not None else default_device()
    recipe = get_recipe(recipe, device) if isinstance(recipe, str) else recipe
    run_dir = Path(out_dir if out_dir is not None else Path("runs") / recipe.name)
    ckpt_path = run_dir / CHECKPOINT_NAME
    settings, saved_state = _run_settings(recipe, ckpt_path, resume, steps, batch_size, seed, config_overrides,
                                          lr_schedule, checkpoint_every, device)
    steps, batch_size, seed = settings["steps"], settings["batch_size"], settings["seed"]
    lr, warmup, grad_clip = settings["lr"], settings["warmup_steps"], settings["grad_clip"]
    ema_decay = settings["ema_decay"]
    settings["train_command"] = train_command(settings, run_dir)

    torch.manual_seed(seed)  # parameter initialisation
    model = build_model(recipe, settings["config"]).to(device)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema_decay else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings["weight_decay"])
    start, losses, seconds, elapsed = 0, [], [], 0.0
    if saved_state is not None:
        tensors, saved = saved_state
        losses, seconds = _restore(tensors, saved, model, ema, opt)
        start, elapsed = saved["step"], saved["elapsed_s"]
        del tensors, saved_state
    elif recipe.prepare is not None:
        recipe.prepare(model, seed)  # statistics of the run's own data (the AR prior's PCA and buckets)
        if ema is not None:
            ema.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    last_plot = -math.inf

    def checkpoint(step, last=False):
        nonlocal last_plot
        now = elapsed + time.perf_counter() - t0
        _save(ckpt_path, model, ema, opt, settings, step, losses, seconds, now)
        plot = last or time.perf_counter() - last_plot > PLOT_EVERY_S
        write_loss_log(run_dir, losses, seconds, plot=plot)
        last_plot = time.perf_counter() if plot else last_plot

    step = start
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=recipe.name, unit="step", dynamic_ncols=True)
    with _StopFlag() as stop, bar:
        while step < steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup, settings["lr_schedule"])
            batch = recipe.make_batch(step, batch_size, seed)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            model.train()
            loss = recipe.loss(model, batch, step_generator(seed, step, stream=1))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{recipe.name}: the loss is {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if ema is not None:
                ema_update(ema, model, ema_decay_at(step, ema_decay))
            step += 1
            losses.append(loss.item())
            seconds.append(elapsed + time.perf_counter() - t0)
            bar.update(1)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
            out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
            if step % checkpoint_every == 0 or step == steps or stop.requested or out_of_time:
                checkpoint(step, last=step == steps or stop.requested or out_of_time)
            if stop.requested:
                raise KeyboardInterrupt(
                    f"stopped at step {step} of {steps}; checkpoint saved to {ckpt_path}. "
                    f"Resume with: python -m diffusion_notes train {recipe.name} --out {run_dir} --resume"
                )
            if out_of_time:
                break

    final = None
    if step == steps:
        state = ema if ema is not None else model.state_dict()
        save_weights(run_dir / WEIGHTS_NAME, state, recipe.name, settings["config"])
        final = build_model(recipe, settings["config"])
        final.load_state_dict({k: v.cpu() for k, v in state.items()})
        final.eval()
    return TrainResult(run_dir, losses, step, step == steps, elapsed + time.perf_counter() - t0, final)
