"""The files of a training run, as safetensors written atomically: checkpoints, final weights, configs.

(Chapter 15's `practice/checkpoints/` reads other people's checkpoint files; this module writes and
reads the library's own.) A checkpoint is one safetensors file: tensors named "model.<name>",
"ema.<name>", "optim.<index>.<key>", "rng.torch" and "log.*", plus JSON in the
file's metadata (step, recipe, config, seed, ...). Nothing is pickled:
`torch.save` would be, and a pickle can run code when it is loaded.

Every write goes to a temporary file in the same directory, is flushed to disk
and then renamed over the old file (`os.replace` is atomic), so a process
killed at any moment leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

METADATA_KEY = "diffusion_notes"
# The files of a run directory (see training/run_state.py).
CHECKPOINT_NAME = "checkpoint.safetensors"  # the latest state: model, EMA, optimiser, RNG, logs
WEIGHTS_NAME = "model.safetensors"  # the final weights (EMA ones when there are any), what pretrained ships


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)
    return path


def sync_directory(directory) -> None:
    """Make the renames in `directory` durable (not possible on every platform)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_stale_temporaries(directory) -> None:
    """Delete temporary files a killed writer left in `directory`."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def save_checkpoint(path, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Save `tensors` and the JSON-able `metadata` to the safetensors file `path`, atomically."""
    ready = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(ready, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return atomic_write_bytes(path, data)


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")


def read_metadata(path) -> dict:
    """The JSON metadata of a file written by `save_checkpoint`, without reading its tensors."""
    path = Path(path)
    _check_exists(path)
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but has no {METADATA_KEY!r} metadata")
    return json.loads(raw)


def load_checkpoint(path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file written by `save_checkpoint`."""
    path = Path(path)
    metadata = read_metadata(path)
    return load_file(str(path), device=str(device)), metadata


# ---------------------------------------------------------------------------
# Flattening state into named tensors.


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """{"w": t} -> {"<prefix>.w": t}."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with "<prefix>.", with the prefix removed."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's `state_dict()` as tensors "optim.<param_index>.<key>" and JSON metadata."""
    tensors, scalars = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    return tensors, json.loads(json.dumps(meta))


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of `flatten_optimizer_state`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict] = {}
    for name, value in strip_prefix(tensors, "optim").items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------
# Model configs (frozen dataclasses) to and from JSON.


def config_to_dict(config) -> dict:
    """The config as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(config_class: type, values: dict, *, source: str = "the config"):
    """Build `config_class(**values)`; fields the dataclass lacks raise a ValueError."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{source} has fields {config_class.__name__} does not know: {', '.join(unknown)} "
            f"(its fields: {', '.join(sorted(known))})"
        )
    hints = typing.get_type_hints(config_class)
    return config_class(**{k: _to_tuple_if_needed(v, hints.get(k)) for k, v in values.items()})


def _to_tuple_if_needed(value, hint):
    if isinstance(value, list) and (hint is tuple or typing.get_origin(hint) is tuple):
        return tuple(value)
    return value


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


def model_hash(path) -> str:
    """The Stable Diffusion web UI's short model hash: the first 10 hex digits of the file's sha256."""
    return sha256(path)[:10]

