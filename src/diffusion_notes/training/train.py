"""One training loop for every model in the book.

`train("toy2d")` reads the model's recipe (see `recipes.py`), trains with
AdamW, a linear warm-up then a cosine (or constant) learning rate, gradient
clipping and, for diffusion models, an exponential moving average (EMA) of the
weights. Every random number comes from a generator seeded by (seed, step), and
torch's global RNG state is saved too, so a run killed and resumed from its last
checkpoint computes exactly the losses of a run that never stopped.

A run directory holds checkpoint.safetensors (the latest), losses.csv and
loss.png (rewritten with the checkpoints, the picture at most every 30 s),
and model.safetensors (the final weights, EMA ones when there are any, or the
tensors the recipe's `trainable_state` picks: a LoRA's, one embedding row).

The same command runs data-parallel, unchanged, under a launcher that sets
WORLD_SIZE, RANK and LOCAL_RANK (`torchrun --nproc-per-node 2 -m diffusion_notes
train toy2d`, or `accelerate launch`): train() joins the process group (gloo on
the CPU, nccl on CUDA with the GPU of LOCAL_RANK) and wraps the model in
torch's DistributedDataParallel, which averages the gradients. The rule that
makes P processes compute the losses of one process at the same global batch N
(to float rounding, not bit for bit):

- every process builds the whole batch, `recipe.make_batch(step, N, seed)` (a
  pure function), and keeps its own contiguous rows [r N/P, (r + 1) N/P);
- every random number the loss draws per item (the timesteps, the noise, the
  caption-dropout uniforms) is drawn for all N rows from the same generator and
  sliced (`device.batch_shard` and the `device.per_item_*` helpers);
- the loss is a mean over items, so the mean of the P shards' gradients is the
  global batch's gradient. N must divide by P (else a ValueError).

Not covered by the rule: losses that compare items across the batch (CLIP's
contrastive loss sees only its shard's pairs), BatchNorm on the CPU (each
process normalises its own rows, with a warning; the classifier's losses differ
by up to 2.5e-2 over 6 steps; on CUDA it becomes SyncBatchNorm, not measured
here), dropout and any draw made outside the per-item helpers (today in
prior_loss, upsampler_loss and the VAE's posterior sample): they train
correctly, but no longer equal one process's numbers.

Rank 0 alone writes the checkpoints, the logs and the progress bar; every rank
can resume from the checkpoint (on several machines, put --out on a shared
disk), with the number of processes it was saved with or another; Ctrl-C (or
SIGTERM) on any rank and --max-seconds stop all ranks after the same step. The
logged loss is the global batch's, the mean over the processes.

Paper: Li et al. 2020 (PyTorch Distributed: Experiences on Accelerating Data Parallel Training)
Paper: Goyal et al. 2017 (Accurate, Large Minibatch SGD), BatchNorm statistics per worker
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from diffusion_notes import __version__
from diffusion_notes.run_files import (
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
from diffusion_notes.device import BatchShard, batch_shard, default_device, shard_rows, step_generator
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
    """Turns the first Ctrl-C into a request to stop at the end of the current step.

    In a data-parallel run SIGTERM too (what torchrun and cluster schedulers send to stop a job).
    """

    def __init__(self, signals=(signal.SIGINT,)):
        self.requested, self._signals, self._previous = False, signals, {}

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self._previous[signum])  # a second Ctrl-C interrupts at once

    def __enter__(self):
        try:
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: Ctrl-C raises KeyboardInterrupt as usual
            pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


# ---------------------------------------------------------------------------
# Data parallelism: torch.distributed and DistributedDataParallel, set up by a launcher.


@dataclass(frozen=True)
class World:
    """Where this process stands in a data-parallel run: rank `rank` of `size` (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0, the process that writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def join_world(device: torch.device) -> tuple[World, torch.device, bool]:
    """(world, device, started): join the process group a launcher describes in the environment.

    torchrun and `accelerate launch` set WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT).
    With WORLD_SIZE > 1 the group is started here (`started` True: train() ends it), gloo on the
    CPU, nccl on CUDA, where each process takes the GPU of its LOCAL_RANK unless `device` names one.
    A group already started by the caller is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return world, _local_device(device, world), False
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device, False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} asks for a data-parallel run, but this torch has no torch.distributed")
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    device = _local_device(device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return world, device, True


def _local_device(device: torch.device, world: World) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


class _RecipeLoss(nn.Module):
    """The recipe's loss as a module: DDP's forward is then the whole loss, whatever parts of the model it calls.

    (A loss may call `model.unet(...)` and `model.encode(...)` rather than `model(...)`; DDP only
    averages the gradients of a backward that follows its own forward.)
    """

    def __init__(self, model: nn.Module, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.loss(self.model, batch, generator)


def _wrap(model: nn.Module, loss, world: World) -> nn.Module | None:
    """DDP over the loss and the model's trainable parameters in a data-parallel run; None in one process."""
    if not world.parallel:
        return None
    # device_ids=None: the batch is already on the model's device. static_graph: the same parameters take
    # part in every step, found on the first (some may be unused); frozen ones are not DDP's.
    return DistributedDataParallel(_RecipeLoss(model, loss), device_ids=None, static_graph=True)


def _sync_batchnorm(model: nn.Module, world: World, device: torch.device, name: str) -> nn.Module:
    """BatchNorm over the global batch: SyncBatchNorm on CUDA; on the CPU (unsupported by torch) a warning."""
    if not world.parallel or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same parameter and buffer tensors
    if world.main:
        warnings.warn(
            f"{name} has BatchNorm layers: on the CPU each of the {world.size} processes normalises its own "
            f"rows (torch's SyncBatchNorm needs a GPU), so the losses will not equal a one-process run's",
            stacklevel=3,
        )
    return model


def shard_batch(batch: dict, shard: BatchShard) -> dict:
    """This process's rows [start, stop) of each tensor (first dimension) or list in `batch` that has `total` rows.

    Dicts inside the batch (the classifier's targets) are sharded the same way; other values (a
    tensor shared by the whole batch, a number) are passed unchanged.
    """
    def rows(value):
        if isinstance(value, dict):
            return {key: rows(v) for key, v in value.items()}
        if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == shard.total:
            return value[shard.start:shard.stop]
        if isinstance(value, (list, tuple)) and len(value) == shard.total:
            return value[shard.start:shard.stop]
        return value

    return rows(batch)


def _agree(world: World, loss: torch.Tensor, *flags: bool) -> tuple[float, ...]:
    """(global mean loss, flag or flag ...): the loss averaged over the processes, each flag true if true on any."""
    if not world.parallel:
        return (loss.item(), *flags)
    values = torch.tensor([loss.item(), *map(float, flags)], dtype=torch.float64, device=loss.device)
    dist.all_reduce(values)  # one sum over the processes per step
    total = values.tolist()
    return (total[0] / world.size, *(x > 0 for x in total[1:]))


# ---------------------------------------------------------------------------
# The loop.


def _run_settings(recipe, ckpt_path: Path, resume: bool, steps, batch_size, seed, config_overrides, lr_schedule,
                  checkpoint_every: int, device, world: World = World()) -> tuple[dict, tuple | None]:
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
        if world.main:  # the only writer
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
    the recipe's frozen parts are bound on the same device. Under torchrun or `accelerate launch`
    the run is data-parallel (see the module docstring); `batch_size` is then the global batch.

    Only parameters with requires_grad train (the recipe's `build` freezes the rest); the
    recipe's `after_step` runs after each optimiser step, and its `trainable_state` picks the
    tensors saved as the final weights. `TrainResult.model` is then a freshly built model
    (initialised from `seed`, as the run began) with those tensors loaded on top.
    """
    device = torch.device(device) if device is not None else default_device()
    world, device, started_group = join_world(device)
    try:
        return _train(recipe, steps, batch_size, out_dir, seed, resume, checkpoint_every, config_overrides,
                      progress, max_seconds, lr_schedule, device, world)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(recipe, steps, batch_size, out_dir, seed, resume, checkpoint_every, config_overrides, progress,
           max_seconds, lr_schedule, device, world: World) -> TrainResult:
    recipe = get_recipe(recipe, device) if isinstance(recipe, str) else recipe
    run_dir = Path(out_dir if out_dir is not None else Path("runs") / recipe.name)
    ckpt_path = run_dir / CHECKPOINT_NAME
    settings, saved_state = _run_settings(recipe, ckpt_path, resume, steps, batch_size, seed, config_overrides,
                                          lr_schedule, checkpoint_every, device, world)
    steps, batch_size, seed = settings["steps"], settings["batch_size"], settings["seed"]
    lr, warmup, grad_clip = settings["lr"], settings["warmup_steps"], settings["grad_clip"]
    ema_decay = settings["ema_decay"]
    settings["train_command"] = train_command(settings, run_dir)
    shard = shard_rows(batch_size, world.size, world.rank) if world.parallel else None  # ValueError if uneven
    if world.parallel:
        settings["processes"] = world.size  # this session's; the run may resume with another number
    else:
        settings.pop("processes", None)

    torch.manual_seed(seed)  # parameter initialisation
    model = build_model(recipe, settings["config"]).to(device)
    model = _sync_batchnorm(model, world, device, recipe.name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{recipe.name}: no parameter requires grad, so there is nothing to train; "
                         f"the recipe's build must leave some parameters trainable")
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema_decay else None
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=settings["weight_decay"])
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
    net = _wrap(model, recipe.loss, world)  # DDP around the loss; `model` keeps the state dict, EMA and checkpoints

    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    last_plot = -math.inf

    def checkpoint(step, last=False):
        nonlocal last_plot
        if not world.main:
            return
        now = elapsed + time.perf_counter() - t0
        _save(ckpt_path, model, ema, opt, settings, step, losses, seconds, now)
        plot = last or time.perf_counter() - last_plot > PLOT_EVERY_S
        write_loss_log(run_dir, losses, seconds, plot=plot)
        last_plot = time.perf_counter() if plot else last_plot

    step = start
    bar = tqdm(total=steps, initial=start, disable=not (progress and world.main), desc=recipe.name, unit="step",
               dynamic_ncols=True)
    stop_signals = (signal.SIGINT, signal.SIGTERM) if world.parallel else (signal.SIGINT,)
    with _StopFlag(stop_signals) as stop, bar:
        while step < steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup, settings["lr_schedule"])
            batch = recipe.make_batch(step, batch_size, seed)  # the global batch, on every process
            if shard is not None:
                batch = shard_batch(batch, shard)  # this process's rows
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            model.train()
            generator = step_generator(seed, step, stream=1)
            if net is None:
                loss = recipe.loss(model, batch, generator)
            else:
                with batch_shard(shard.start, shard.stop, shard.total):  # per-item draws: all N rows, ours kept
                    loss = net(batch, generator)  # DDP's forward; its backward averages the gradients
            if not world.parallel and not torch.isfinite(loss):
                raise FloatingPointError(f"{recipe.name}: the loss is {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the processes here
            if grad_clip:
                nn.utils.clip_grad_norm_(trainable, grad_clip)
            opt.step()
            if recipe.after_step is not None:
                with torch.no_grad():
                    recipe.after_step(model)
            if ema is not None:
                ema_update(ema, model, ema_decay_at(step, ema_decay))
            out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
            loss_value, stop_now, out_of_time = _agree(world, loss, stop.requested, out_of_time)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"{recipe.name}: the loss is {loss_value} at step {step}; lower the lr")
            step += 1
            losses.append(loss_value)
            seconds.append(elapsed + time.perf_counter() - t0)
            bar.update(1)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
            if step % checkpoint_every == 0 or step == steps or stop_now or out_of_time:
                checkpoint(step, last=step == steps or stop_now or out_of_time)
            if stop_now:
                if world.parallel:
                    dist.barrier()  # every process leaves after rank 0 has saved the checkpoint
                raise KeyboardInterrupt(
                    f"stopped at step {step} of {steps}; checkpoint saved to {ckpt_path}. "
                    f"Resume with: python -m diffusion_notes train {recipe.name} --out {run_dir} --resume"
                )
            if out_of_time:
                break

    final = None
    if step == steps:
        final = _final_model(recipe, settings, model, ema, run_dir, seed, world)
    if world.parallel:
        dist.barrier()  # the final weights are written before any process leaves
    return TrainResult(run_dir, losses, step, step == steps, elapsed + time.perf_counter() - t0, final)


def _final_model(recipe: Recipe, settings: dict, model: nn.Module, ema, run_dir: Path, seed: int,
                 world: World) -> nn.Module:
    """Save the final weights (rank 0) and return them loaded into a freshly built model, in eval mode.

    The weights are the EMA ones if any, else the model's; with the recipe's `trainable_state`, only
    the tensors it picks from a model holding those weights, and the model returned is then one built
    from `seed` (as at step 0) with them loaded on top: what a reader of the file gets.
    """
    state = ema if ema is not None else model.state_dict()
    if recipe.trainable_state is None:
        if world.main:
            save_weights(run_dir / WEIGHTS_NAME, state, recipe.name, settings["config"])
        final = build_model(recipe, settings["config"])
        final.load_state_dict({k: v.cpu() for k, v in state.items()})
        return final.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        holder = build_model(recipe, settings["config"])
        holder.load_state_dict({k: v.cpu() for k, v in state.items()})
        picked = recipe.trainable_state(holder)
        if not isinstance(picked, dict) or not picked or not all(
                isinstance(k, str) and torch.is_tensor(v) for k, v in picked.items()):
            raise ValueError(f"{recipe.name}: trainable_state must return a non-empty dict of name -> tensor")
        picked = {k: v.detach().cpu().contiguous() for k, v in picked.items()}
        torch.manual_seed(seed)
        final = build_model(recipe, settings["config"])
    unexpected = final.load_state_dict(picked, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{recipe.name}: trainable_state returned tensors the model does not have, first "
                         f"{unexpected[0]!r} ({len(unexpected)} in all)")
    if world.main:
        save_weights(run_dir / WEIGHTS_NAME, picked, recipe.name, settings["config"])
    return final.eval()
