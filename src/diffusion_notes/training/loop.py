"""One training loop for every model in the book.

`train("toy2d")` reads the model's recipe (see `recipes/`) and trains it: each step sets the
learning rate (a linear warm-up, then a cosine or constant schedule), builds the batch, runs the
loss forward and backward, clips the gradient norm, takes an AdamW step, updates the exponential
moving average (EMA) of the weights (diffusion models), logs the loss, and now and then writes a
checkpoint. What a run keeps and how it resumes exactly is `run_state.py`; the data-parallel run
(the same command under torchrun) is `distributed.py`; the logs are `logs.py`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from diffusion_notes.device import default_device
from diffusion_notes.rng import step_generator
from diffusion_notes.training.distributed import World, join_world, shard_batch, wrap
from diffusion_notes.training.logs import LossLog
from diffusion_notes.training.recipes import Recipe, get_recipe
from diffusion_notes.training.run_state import RunState, TrainArgs


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


def train(recipe: str | Recipe, **options) -> TrainResult:
    """Train the model of `recipe` (a name or a Recipe); `options` are the other fields of `TrainArgs`.

    `steps`, `batch_size` and `seed` default to the recipe's (seed 0); `config_overrides`
    ({"hidden": 16} or ["hidden=16"]) change the model's config. With `resume` the run continues
    from out_dir/checkpoint.safetensors with the saved settings (the optimiser's numbers too, even
    if the recipe changed since). `max_seconds` stops early (after a checkpoint); resume later to
    go on. Runs on `device` (default: `default_device()`, CUDA, then MPS, then CPU); the recipe's
    frozen parts are bound on the same device. Under torchrun or `accelerate launch` the run is
    data-parallel (see `distributed.py`); `batch_size` is then the global batch.

    Only parameters with requires_grad train (the recipe's `build` freezes the rest); the
    recipe's `after_step` runs after each optimiser step, and its `trainable_state` picks the
    tensors saved as the final weights. `TrainResult.model` is then a freshly built model
    (initialised from `seed`, as the run began) with those tensors loaded on top.
    """
    return run(TrainArgs(recipe, **options))


def run(args: TrainArgs) -> TrainResult:
    """`train` with its arguments in one TrainArgs (what the command line fills)."""
    device = torch.device(args.device) if args.device is not None else default_device()
    world, device, started_group = join_world(device)
    try:
        recipe = get_recipe(args.recipe, device) if isinstance(args.recipe, str) else args.recipe
        return _train(recipe, args, world, device)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(recipe: Recipe, args: TrainArgs, world: World, device: torch.device) -> TrainResult:
    state = RunState.open(recipe, args, world, device)
    model, ema, opt, settings = state.model, state.ema, state.opt, state.settings
    steps, batch_size, seed = settings["steps"], settings["batch_size"], settings["seed"]
    shard = world.shard(batch_size)  # this process's rows of the global batch (None in one process)
    loss_of = wrap(model, recipe.loss, world, shard)  # (batch, generator) -> loss; DDP in a data-parallel run
    trainable = [p for p in model.parameters() if p.requires_grad]
    log = LossLog(state.run_dir)
    if world.main:
        state.run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def clock() -> float:  # the run's time over all its sessions
        return state.elapsed + time.perf_counter() - t0

    bar = tqdm(total=steps, initial=state.step, disable=not (args.progress and world.main), desc=recipe.name,
               unit="step", dynamic_ncols=True)
    with world.stop_flag() as stop, bar:
        while state.step < steps:
            step = state.step
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, settings["lr"], settings["warmup_steps"], settings["lr_schedule"])
            batch = shard_batch(recipe.make_batch(step, batch_size, seed), shard)  # the global batch; our rows
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

            model.train()
            loss = loss_of(batch, step_generator(seed, step, stream=1))
            if not world.parallel and not torch.isfinite(loss):
                raise FloatingPointError(f"{recipe.name}: the loss is {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the processes here
            if settings["grad_clip"]:
                nn.utils.clip_grad_norm_(trainable, settings["grad_clip"])
            opt.step()
            if recipe.after_step is not None:
                with torch.no_grad():
                    recipe.after_step(model)
            if ema is not None:
                ema_update(ema, model, ema_decay_at(step, settings["ema_decay"]))

            loss_value = world.mean(loss)  # the global batch's loss
            out_of_time = args.max_seconds is not None and time.perf_counter() - t0 > args.max_seconds
            stop_now, out_of_time = world.should_stop(stop, out_of_time)  # any process's Ctrl-C stops them all
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"{recipe.name}: the loss is {loss_value} at step {step}; lower the lr")
            state.step += 1
            state.losses.append(loss_value)
            state.seconds.append(clock())
            bar.update(1)
            if state.step % 10 == 0 or state.step == steps:
                bar.set_postfix(loss=f"{sum(state.losses[-10:]) / len(state.losses[-10:]):.4f}")

            last = state.step == steps or stop_now or out_of_time
            if world.main and (state.step % args.checkpoint_every == 0 or last):
                state.save(clock())
                log.write(state.losses, state.seconds, last=last)
            if stop_now:
                world.barrier()  # every process leaves after rank 0 has saved the checkpoint
                raise KeyboardInterrupt(
                    f"stopped at step {state.step} of {steps}; checkpoint saved to {state.ckpt_path}. "
                    f"Resume with: python -m diffusion_notes train {recipe.name} --out {state.run_dir} --resume"
                )
            if out_of_time:
                break

    final = state.final_model(world) if state.step == steps else None
    world.barrier()  # the final weights are written before any process leaves
    return TrainResult(state.run_dir, state.losses, state.step, state.step == steps, clock(), final)
