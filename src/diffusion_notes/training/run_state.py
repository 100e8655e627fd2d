"""The state of a training run, and its files: settings, resume, checkpoints and the final model.

A run directory holds checkpoint.safetensors (the latest state: model, EMA, optimiser, torch's
RNG state and the logs), losses.csv and loss.png (`logs.py`), and at the end model.safetensors
(the final weights, EMA ones when there are any, or the tensors the recipe's `trainable_state`
picks: a LoRA's, one embedding row). Every random number of a step comes from a generator seeded
by (seed, step) and torch's global RNG state is saved too, so a run killed and resumed from its
last checkpoint computes exactly the losses of a run that never stopped. Every rank of a
data-parallel run can resume from the checkpoint (on several machines, put --out on a shared
disk), with the number of processes it was saved with or another; rank 0 alone writes.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from diffusion_notes import __version__
from diffusion_notes.run_files import (
    CHECKPOINT_NAME,
    WEIGHTS_NAME,
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
from diffusion_notes.training.distributed import ONE_PROCESS, World, sync_batchnorm
from diffusion_notes.training.overrides import apply_overrides, config_diff
from diffusion_notes.training.recipes import Recipe

LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainArgs:
    """What one `train` command asks for (the CLI fills it; None: the recipe's value, or the saved one on resume)."""

    recipe: str | Recipe  # a recipe name or a Recipe
    steps: int | None = None
    batch_size: int | None = None  # the global batch in a data-parallel run
    out_dir: str | Path | None = None  # default runs/<recipe>
    seed: int | None = None  # default 0
    resume: bool = False  # continue from out_dir/checkpoint.safetensors, with its settings
    checkpoint_every: int = 500
    config_overrides: dict | list | None = None  # {"hidden": 16} or ["hidden=16"]
    progress: bool = True
    max_seconds: float | None = None  # stop early (after a checkpoint); resume later
    lr_schedule: str | None = None  # "cosine" (default) or "constant" after the warm-up
    device: str | torch.device | None = None  # default: default_device()


# ---------------------------------------------------------------------------
# Settings of a run: from the arguments, or from the checkpoint on --resume.


def _settings(recipe: Recipe, args: TrainArgs, device) -> dict:
    config = apply_overrides(recipe.config, args.config_overrides)
    return {
        "recipe": recipe.name,
        "config": config_to_dict(config),
        "config_overrides": config_diff(config, recipe.config),
        "steps": int(args.steps if args.steps is not None else recipe.steps),
        "batch_size": int(args.batch_size if args.batch_size is not None else recipe.batch_size),
        "seed": int(args.seed if args.seed is not None else 0),
        "lr": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": recipe.warmup_steps,
        "grad_clip": recipe.grad_clip,
        "ema_decay": recipe.ema_decay,
        "lr_schedule": args.lr_schedule or "cosine",
        "device": str(device),
        "threads": torch.get_num_threads(),  # float sums may differ with another thread count
        "dataset": recipe.dataset,
    }


def _resume_settings(recipe: Recipe, saved: dict, args: TrainArgs, path) -> dict:
    """The saved settings; any argument given must agree with them."""
    if saved["recipe"] != recipe.name:
        raise ValueError(
            f"{path} is a checkpoint of {saved['recipe']!r}, not {recipe.name!r}; resume it with that model"
        )
    given = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "lr_schedule": args.lr_schedule}
    if args.config_overrides:
        given["config"] = config_to_dict(apply_overrides(recipe.config, args.config_overrides))
    for key, value in given.items():
        if value is not None and value != saved[key]:
            raise ValueError(
                f"cannot resume {path}: it was started with {key}={saved[key]!r}, now {key}={value!r}. "
                f"Resume with the same settings (or leave them out), or start a new run in another --out directory"
            )
    return saved


def _run_settings(recipe: Recipe, args: TrainArgs, ckpt_path: Path, device, world: World) -> tuple[dict, tuple | None]:
    """The run's settings, checked, and on --resume the checkpoint's (tensors, metadata) to restore."""
    if args.lr_schedule is not None and args.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {args.lr_schedule!r}")
    if args.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {args.checkpoint_every}")
    saved_state = None
    if args.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}; start the run without --resume")
        saved_state = load_checkpoint(ckpt_path)
        settings = _resume_settings(recipe, saved_state[1], args, ckpt_path)
        if world.main:  # the only writer
            remove_stale_temporaries(ckpt_path.parent)
    else:
        if ckpt_path.exists():
            raise ValueError(
                f"{ckpt_path} already exists; pass --resume to continue that run, or choose another --out"
            )
        settings = _settings(recipe, args, device)
    if settings["steps"] < 1 or settings["batch_size"] < 1:
        raise ValueError(f"steps and batch_size must be positive, got {settings['steps']} and {settings['batch_size']}")
    return settings, saved_state


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


def build_model(recipe: Recipe, config: dict | object) -> nn.Module:
    """recipe.build on a config given as a dataclass or as a dict."""
    if isinstance(config, dict):
        config = config_from_dict(type(recipe.config), config, source=f"the {recipe.name} config")
    return recipe.build(config)


def save_weights(path, state: dict[str, torch.Tensor], recipe_name: str, config: dict) -> None:
    """The final weights with {recipe, config} as metadata (what `pretrained` ships)."""
    save_checkpoint(path, state, {"recipe": recipe_name, "config": config})


# ---------------------------------------------------------------------------
# The run's state: opened (new or resumed), saved, and turned into the final model.


@dataclass
class RunState:
    """Everything a checkpoint holds: the settings, the model, its EMA, the optimiser, the step and the logs."""

    recipe: Recipe
    run_dir: Path
    settings: dict
    model: nn.Module
    ema: dict[str, torch.Tensor] | None
    opt: torch.optim.Optimizer
    step: int = 0  # steps done
    losses: list[float] = field(default_factory=list)  # one per step done
    seconds: list[float] = field(default_factory=list)  # the run's clock at each step
    elapsed: float = 0.0  # seconds spent by the sessions before this one

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @classmethod
    def open(cls, recipe: Recipe, args: TrainArgs, world: World = ONE_PROCESS, device="cpu") -> RunState:
        """A new run (model initialised from the seed, `recipe.prepare` applied) or, with args.resume, the saved one."""
        run_dir = Path(args.out_dir if args.out_dir is not None else Path("runs") / recipe.name)
        settings, saved_state = _run_settings(recipe, args, run_dir / CHECKPOINT_NAME, device, world)
        settings["train_command"] = train_command(settings, run_dir)
        if world.parallel:
            settings["processes"] = world.size  # this session's; the run may resume with another number
        else:
            settings.pop("processes", None)
        torch.manual_seed(settings["seed"])  # parameter initialisation
        model = sync_batchnorm(build_model(recipe, settings["config"]).to(device), world, device, recipe.name)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(f"{recipe.name}: no parameter requires grad, so there is nothing to train; "
                             f"the recipe's build must leave some parameters trainable")
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if settings["ema_decay"] else None
        opt = torch.optim.AdamW(trainable, lr=settings["lr"], weight_decay=settings["weight_decay"])
        state = cls(recipe, run_dir, settings, model, ema, opt)
        if saved_state is not None:
            state._restore(*saved_state)
        elif recipe.prepare is not None:
            recipe.prepare(model, settings["seed"])  # statistics of the run's own data (the AR prior's PCA and buckets)
            if ema is not None:
                ema.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return state

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.model.load_state_dict(strip_prefix(tensors, "model"))
        if self.ema is not None:
            for name, value in strip_prefix(tensors, "ema").items():
                self.ema[name].copy_(value)
        self.opt.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
        self.losses, self.seconds = tensors["log.loss"].tolist(), tensors["log.seconds"].tolist()
        self.step, self.elapsed = meta["step"], meta["elapsed_s"]

    def save(self, clock: float) -> None:
        """Write checkpoint.safetensors (atomically); `clock` is the run's time so far, over all its sessions."""
        tensors = with_prefix(self.model.state_dict(), "model")
        if self.ema is not None:
            tensors.update(with_prefix(self.ema, "ema"))
        optim_tensors, optim_meta = flatten_optimizer_state(self.opt.state_dict())
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()  # (N,) uint8
        tensors["log.loss"] = torch.tensor(self.losses, dtype=torch.float64)
        tensors["log.seconds"] = torch.tensor(self.seconds, dtype=torch.float64)
        meta = dict(self.settings, step=self.step, elapsed_s=clock, optimizer=optim_meta, **_provenance())
        save_checkpoint(self.ckpt_path, tensors, meta)

    def final_model(self, world: World = ONE_PROCESS) -> nn.Module:
        """Save the final weights (rank 0) and return them loaded into a freshly built model, in eval mode.

        The weights are the EMA ones if any, else the model's; with the recipe's `trainable_state`, only
        the tensors it picks from a model holding those weights, and the model returned is then one built
        from the seed (as at step 0) with them loaded on top: what a reader of the file gets.
        """
        recipe, config, seed = self.recipe, self.settings["config"], self.settings["seed"]
        state = self.ema if self.ema is not None else self.model.state_dict()
        if recipe.trainable_state is None:
            if world.main:
                save_weights(self.run_dir / WEIGHTS_NAME, state, recipe.name, config)
            final = build_model(recipe, config)
            final.load_state_dict({k: v.cpu() for k, v in state.items()})
            return final.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            holder = build_model(recipe, config)
            holder.load_state_dict({k: v.cpu() for k, v in state.items()})
            picked = recipe.trainable_state(holder)
            if not isinstance(picked, dict) or not picked or not all(
                    isinstance(k, str) and torch.is_tensor(v) for k, v in picked.items()):
                raise ValueError(f"{recipe.name}: trainable_state must return a non-empty dict of name -> tensor")
            picked = {k: v.detach().cpu().contiguous() for k, v in picked.items()}
            torch.manual_seed(seed)
            final = build_model(recipe, config)
        unexpected = final.load_state_dict(picked, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{recipe.name}: trainable_state returned tensors the model does not have, first "
                             f"{unexpected[0]!r} ({len(unexpected)} in all)")
        if world.main:
            save_weights(self.run_dir / WEIGHTS_NAME, picked, recipe.name, config)
        return final.eval()


def _provenance() -> dict:
    return {
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "diffusion_notes_version": __version__,
        "python_version": platform.python_version(),
    }
