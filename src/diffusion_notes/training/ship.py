"""Shipping a finished run: copy its weights into the package and write the manifest entry.

`ship(run_dir)` runs the recipe's evaluation on the shipped weights (with the
frozen parts it binds), records how the model was trained (steps, batch size,
seed, data, wall time, machine) and the commands that train it again. The new
weights are staged under a hidden name while they are evaluated; only then are
they renamed into place, right before the manifest, so a failed evaluation
leaves the shelf as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import torch

from diffusion_notes.pretrained import MANIFEST_NAME, read_manifest, weights_path
from diffusion_notes.run_files import (
    CHECKPOINT_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    load_checkpoint,
    read_metadata,
    sync_directory,
)
from diffusion_notes.training.recipes import get_recipe
from diffusion_notes.training.run_state import build_model


def machine_info(device: str = "cpu", threads: int | None = None) -> dict:
    """Where a model was trained: platform, CPU model, cores, torch threads, torch version and device."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info_ = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}
    if threads is not None:
        info_["threads"] = threads
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    info_["device"] = torch.cuda.get_device_name(0) if on_cuda else device
    return info_


def _mean_of_last(values: list[float], k: int) -> float:
    tail = values[-k:]
    return float(sum(tail) / max(1, len(tail)))


def loss_curve(losses: list[float], points: int = 60) -> list[list[float]]:
    """The training loss averaged over `points` equal windows: [[last step of window, mean loss], ...].

    Kept in the manifest so a chapter can draw a shipped model's training curve without its run folder.
    """
    n = len(losses)
    edges = sorted({round(i * n / points) for i in range(points + 1)})
    return [
        [hi, round(sum(losses[lo:hi]) / (hi - lo), 6)] for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo
    ]


def ship(run_dir, name: str | None = None, weights_dir=None, evaluate: bool = True) -> dict:
    """Copy run_dir/model.safetensors into the weights directory as <name>.safetensors and record it.

    Runs the recipe's `evaluate` on the staged weights, then renames them into place and writes the
    manifest entry. Returns the entry. If anything fails before, the weights directory is left as it was.
    """
    run_dir = Path(run_dir)
    run = _finished_run(run_dir)
    name = name or run["recipe"]
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a shipped model's name may hold letters, digits, '_' and '-', got {name!r}")
    target_dir = weights_path(weights_dir)
    target = target_dir / f"{name}.safetensors"
    data = (run_dir / WEIGHTS_NAME).read_bytes()
    staged = [target_dir / f".{name}.safetensors.staged", target_dir / f".{MANIFEST_NAME}.staged"]
    try:
        atomic_write_bytes(staged[0], data)
        metrics = _evaluate(run, staged[0]) if evaluate else {}
        entry = _entry(run, run_dir, name, target, data, metrics)
        manifest = read_manifest(weights_dir)
        manifest["models"][name] = entry
        manifest["models"] = dict(sorted(manifest["models"].items()))
        atomic_write_bytes(staged[1], (json.dumps(manifest, indent=2) + "\n").encode())
        os.replace(staged[0], target)  # the weights and their manifest entry, one rename after the other
        os.replace(staged[1], target_dir / MANIFEST_NAME)
        sync_directory(target_dir)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    print(f"shipped {name}: {target} ({len(data) / 1e6:.2f} MB), metrics {entry['metrics']}", file=sys.stderr)
    return entry


def _finished_run(run_dir: Path) -> dict:
    """The settings of the finished run in `run_dir` (a FileNotFoundError or ValueError if it is not one)."""
    source, ckpt = run_dir / WEIGHTS_NAME, run_dir / CHECKPOINT_NAME
    if not source.is_file() or not ckpt.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no finished run: {WEIGHTS_NAME} and {CHECKPOINT_NAME} must both exist"
        )
    run = read_metadata(ckpt)
    if run["step"] != run["steps"]:
        raise ValueError(
            f"the run in {run_dir} stopped at step {run['step']} of {run['steps']}; finish it with --resume first"
        )
    return run


def _evaluate(run: dict, weights: Path) -> dict:
    """The recipe's metrics of the weights in `weights` ({} for a recipe without an evaluation)."""
    recipe = get_recipe(run["recipe"])
    if recipe.evaluate is None:
        return {}
    model = build_model(recipe, run["config"])
    # a fine-tuning run ships only what it trained (recipe.trainable_state): loaded on top of the built model
    unexpected = model.load_state_dict(load_checkpoint(weights)[0], strict=recipe.trainable_state is None)
    if unexpected and unexpected.unexpected_keys:
        raise ValueError(f"{weights} holds tensors the {run['recipe']} model does not have: "
                         f"{unexpected.unexpected_keys[0]!r}")
    return recipe.evaluate(model.eval())


def _entry(run: dict, run_dir: Path, name: str, target: Path, data: bytes, metrics: dict) -> dict:
    """The manifest entry of the weights `data`, shipped as `target` from the run in `run_dir`."""
    losses = load_checkpoint(run_dir / CHECKPOINT_NAME)[0]["log.loss"].tolist()
    ship_words = ["python -m diffusion_notes ship", shlex.quote(str(run_dir))]
    ship_words += ["--name", name] if name != run["recipe"] else []
    return {
        "recipe": run["recipe"],
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "config": run["config"],
        "steps": run["steps"],
        "batch_size": run["batch_size"],
        "lr": run["lr"],
        "lr_schedule": run["lr_schedule"],
        "seed": run["seed"],
        "dataset": run["dataset"],
        "wall_time_s": round(run["elapsed_s"], 3),
        "machine": machine_info(run["device"], run.get("threads")),
        "train_command": run["train_command"],
        "ship_command": " ".join(ship_words),
        "trained_on": run["saved_at"][:10] if "saved_at" in run else date.today().isoformat(),
        "metrics": {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()},
        "final_loss": _mean_of_last(losses, 100),
        "loss_curve": loss_curve(losses),
    }
