"""The models that ship with the package, and how they get there.

`weights/manifest.json` lists each shipped model: its recipe, file, sha256,
config, how it was trained (steps, batch size, seed, data, wall time, machine)
and its metrics, and the command that trains it again. `load(name)` checks the
file's checksum and config against the manifest before it builds the model.
`ship(run_dir)` copies a finished run's weights into the package and writes the
manifest entry.

The weights directory is the package's `weights/` folder, unless the
environment variable DIFFUSION_NOTES_WEIGHTS or a `weights_dir=` argument
names another.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_write_bytes, load_checkpoint, read_metadata
from .recipes import config_from_dict, get_recipe

WEIGHTS_ENV_VAR = "DIFFUSION_NOTES_WEIGHTS"
MANIFEST_NAME = "manifest.json"
# Pipelines assembled from shipped models: name -> (module, class); the class has from_pretrained(device, weights_dir).
PIPELINES = {"stable_diffusion": ("diffusion_notes.pipeline", "LatentDiffusionPipeline"),
             "unclip": ("diffusion_notes.unclip_pipeline", "UnCLIPPipeline"),
             "glide": ("diffusion_notes.unclip_pipeline", "GLIDEPipeline")}


class WeightsError(ValueError):
    """A shipped weights file does not match its manifest entry."""


def weights_path(weights_dir=None) -> Path:
    """Where the shipped weights live: the argument, $DIFFUSION_NOTES_WEIGHTS, or the package's weights/."""
    if weights_dir is not None:
        return Path(weights_dir)
    if os.environ.get(WEIGHTS_ENV_VAR):
        return Path(os.environ[WEIGHTS_ENV_VAR])
    return Path(__file__).resolve().parent / "weights"


def read_manifest(weights_dir=None) -> dict:
    path = weights_path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        return {"models": {}}
    return json.loads(path.read_text())


def available(weights_dir=None) -> list[str]:
    """Names of the shipped models."""
    return sorted(read_manifest(weights_dir)["models"])


def info(name: str, weights_dir=None) -> dict:
    """The manifest entry of the shipped model `name`."""
    models = read_manifest(weights_dir)["models"]
    if name not in models:
        shipped = ", ".join(sorted(models)) or "none yet"
        raise ValueError(
            f"no shipped model called {name!r}; shipped models: {shipped} "
            f"(pretrained.load also assembles the pipelines {', '.join(PIPELINES)}). "
            "Train one with: python -m diffusion_notes train MODEL, "
            "then ship it with: python -m diffusion_notes ship RUN_DIR"
        )
    return models[name]


def retrain_command(entry: dict) -> str:
    """The commands that rebuild a shipped model from scratch."""
    return f"{entry['train_command']} && {entry['ship_command']}"


_SHA256_CACHE: dict[tuple, str] = {}


def sha256(path) -> str:
    """Hex sha256 of a file, cached per process by (path, mtime, size)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def verify(name: str, weights_dir=None) -> Path:
    """Check that the file of `name` exists and has the manifest's checksum and config; return its path."""
    entry = info(name, weights_dir)
    path = weights_path(weights_dir) / entry["file"]
    retrain = retrain_command(entry)
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name!r} are missing: no file {path}. Retrain them with: {retrain}")
    actual = sha256(path)
    if actual != entry["sha256"]:
        raise WeightsError(
            f"the weights file {path} is damaged or was replaced: its sha256 is {actual}, "
            f"the manifest expects {entry['sha256']}. Retrain it with: {retrain}"
        )
    recipe = get_recipe(entry["recipe"])
    try:
        config_from_dict(type(recipe.config), entry["config"], source=f"the manifest's config for {name!r}")
    except ValueError as err:
        raise WeightsError(f"{err}. The code changed since {path} was trained; retrain it with: {retrain}") from None
    stored = read_metadata(path)
    if stored.get("recipe") != entry["recipe"] or stored.get("config") != entry["config"]:
        raise WeightsError(
            f"the config stored in {path} ({stored.get('recipe')}: {stored.get('config')}) differs from the "
            f"manifest's ({entry['recipe']}: {entry['config']}). Retrain it with: {retrain}"
        )
    return path


def load(name: str, device=None, weights_dir=None):
    """The shipped model `name`, verified, in eval mode, float32, on `device` (default CPU).

    A name in PIPELINES ("stable_diffusion") returns that pipeline, built from its shipped parts.
    """
    if name in PIPELINES:
        module, cls = PIPELINES[name]
        return getattr(importlib.import_module(module), cls).from_pretrained(device, weights_dir)
    entry = info(name, weights_dir)
    path = verify(name, weights_dir)
    recipe = get_recipe(entry["recipe"])
    model = recipe.build(config_from_dict(type(recipe.config), entry["config"]))
    tensors, _ = load_checkpoint(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise WeightsError(
            f"{path} does not fit the {entry['recipe']} model: {err}. Retrain it with: {retrain_command(entry)}"
        ) from None
    return model.float().to(device if device is not None else "cpu").eval()


# ---------------------------------------------------------------------------
# Shipping a finished run.


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

    Runs the recipe's `evaluate` on the shipped weights and writes the manifest
    entry (atomically). Returns the entry.
    """
    from .train import CHECKPOINT_NAME, WEIGHTS_NAME

    run_dir = Path(run_dir)
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
    name = name or run["recipe"]
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a shipped model's name may hold letters, digits, '_' and '-', got {name!r}")
    target_dir = weights_path(weights_dir)
    data = source.read_bytes()
    target = atomic_write_bytes(target_dir / f"{name}.safetensors", data)

    recipe = get_recipe(run["recipe"])
    metrics = {}
    if evaluate and recipe.evaluate is not None:
        model = recipe.build(config_from_dict(type(recipe.config), run["config"]))
        model.load_state_dict(load_checkpoint(target)[0])
        metrics = recipe.evaluate(model.eval())
    losses = load_checkpoint(ckpt)[0]["log.loss"].tolist()
    ship_words = ["python -m diffusion_notes ship", shlex.quote(str(run_dir))]
    ship_words += ["--name", name] if name != run["recipe"] else []
    entry = {
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
    manifest = read_manifest(weights_dir)
    manifest["models"][name] = entry
    manifest["models"] = dict(sorted(manifest["models"].items()))
    atomic_write_bytes(target_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    print(f"shipped {name}: {target} ({len(data) / 1e6:.2f} MB), metrics {entry['metrics']}", file=sys.stderr)
    return entry
