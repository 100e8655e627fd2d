"""The Checkpoint Merger: two or three checkpoints' tensors mixed into a new checkpoint file.

    "Weighted sum":   theta = (1 - M) theta_A + M theta_B
    "Add difference": theta = theta_A + M (theta_B - theta_C)     (graft what B learned beyond C onto A)

The result is written in the same checkpoint format (`checkpoint.save_checkpoint`), so it has its own
sha256 and short hash, and its metadata, and a `manifest.json` entry beside it, record the recipe:
the method, M, and each input's name and hash.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from diffusion_notes.practice.webui.models import RECIPE, CheckpointInfo, checkpoint_info
from diffusion_notes.run_files import atomic_write_bytes, load_checkpoint, read_metadata, save_checkpoint

METHODS = ("Weighted sum", "Add difference")
MANIFEST = "manifest.json"


def weighted_sum(a: torch.Tensor, b: torch.Tensor, m: float) -> torch.Tensor:
    return a * (1 - m) + b * m


def add_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, m: float) -> torch.Tensor:
    return a + (b - c) * m


def merge_tensors(a: dict, b: dict, c: dict | None, method: str, multiplier: float) -> dict:
    """The merged state dict; every input must hold the same tensor names and shapes."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier):
        raise ValueError(f"the multiplier M must be a number, got {multiplier!r}")
    if method == "Add difference" and c is None:
        raise ValueError("Add difference needs a tertiary model C")
    for name, other in (("B", b), ("C", c)):
        if other is None:
            continue
        if set(other) != set(a) or any(other[k].shape != a[k].shape for k in a):
            raise ValueError(f"model {name} has other tensors than model A: they are different architectures")
    if method == "Weighted sum":
        return {k: weighted_sum(a[k], b[k], multiplier) for k in a}
    return {k: add_difference(a[k], b[k], c[k], multiplier) for k in a}


def merge(a: CheckpointInfo, b: CheckpointInfo, c: CheckpointInfo | None, method: str, multiplier: float,
          out_dir, name: str = "") -> tuple[CheckpointInfo, dict]:
    """Write the merged checkpoint into out_dir; returns its info and its manifest entry."""
    if not name:
        parts = [a.model_name, b.model_name] + ([c.model_name] if c and method == "Add difference" else [])
        name = f"{'_'.join(parts)}_{multiplier:g}-{'sum' if method == 'Weighted sum' else 'diff'}"
    if not re.fullmatch(r"[\w.\-]+", name) or name.startswith("."):
        raise ValueError(f"a checkpoint name may hold letters, digits, '_', '-' and '.', got {name!r}")
    name = name.removesuffix(".safetensors")
    out_dir = Path(out_dir)
    path = out_dir / f"{name}.safetensors"
    inputs = [x for x in (a, b, c if method == "Add difference" else None) if x is not None]
    if any(path.resolve() == x.path.resolve() for x in inputs):
        raise ValueError(f"{path.name} is one of the inputs; give the merged model another name")
    tensors = [load_checkpoint(x.path)[0] for x in inputs]
    metas = [read_metadata(x.path) for x in inputs]
    if any(m.get("recipe") != RECIPE or m.get("config") != metas[0].get("config") for m in metas):
        raise ValueError("the models to merge must all be latent-diffusion UNets with the same config")
    merged = merge_tensors(tensors[0], tensors[1], tensors[2] if len(tensors) > 2 else None, method, multiplier)
    recipe = {"method": method, "multiplier": multiplier,
              "models": {role: {"name": x.path.name, "hash": x.hash, "sha256": x.sha256}
                         for role, x in zip("ABC", inputs)}}
    save_checkpoint(path, merged, {"recipe": RECIPE, "config": metas[0]["config"], "merge": recipe})
    info = checkpoint_info(path)
    entry = {"file": path.name, "sha256": info.sha256, "model_hash": info.hash, "recipe": RECIPE,
             "config": metas[0]["config"], "merge": recipe}
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"models": {}}
    manifest["models"][name] = entry
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return info, entry
