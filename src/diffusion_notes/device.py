"""Where tensors live, and how a seed gives the same noise on every device.

One helper picks the device (CUDA, then MPS, then CPU) and one the CPU threads; the others make a
seed reproduce the same noise on every device. Noise is always drawn on the CPU from a
`torch.Generator` and then moved, as diffusers' `randn_tensor` does, so seed 0 gives the same
starting image on a laptop and on a GPU. Seeds per training step and the per-item draws of a
data-parallel loss are `rng.py`'s.
"""

from __future__ import annotations

import operator
import os
import random
from collections.abc import Sequence

import numpy as np
import torch

DEVICE_ENV_VAR = "DIFFUSION_NOTES_DEVICE"
DEVICE_KINDS = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _is_available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return _mps_available()
    return True


def default_device() -> torch.device:
    """The device the book runs on: CUDA, then MPS, then CPU.

    Set the environment variable ``DIFFUSION_NOTES_DEVICE`` to ``cpu``,
    ``cuda`` or ``mps`` to force one (for example to build the book on CPU
    on a machine with a GPU).
    """
    forced = os.environ.get(DEVICE_ENV_VAR, "").strip().lower()
    if forced:
        if forced not in DEVICE_KINDS:
            raise ValueError(
                f"{DEVICE_ENV_VAR} must be one of {', '.join(DEVICE_KINDS)}, "
                f"got {os.environ[DEVICE_ENV_VAR]!r}"
            )
        if not _is_available(forced):
            raise RuntimeError(
                f"{DEVICE_ENV_VAR}={forced} forces the {forced} device, "
                f"but torch reports that {forced} is not available on this machine"
            )
        return torch.device(forced)
    for kind in ("cuda", "mps"):
        if _is_available(kind):
            return torch.device(kind)
    return torch.device("cpu")


def set_threads(n: int) -> int:
    """Give torch n CPU threads, or fewer if OMP_NUM_THREADS asks for fewer; returns the number set.

    A chapter whose batches are big enough to gain from a second core asks for two. A runner that
    executes chapters side by side, one core each, sets OMP_NUM_THREADS=1, and this keeps the
    chapter on its one core instead of oversubscribing the machine.
    """
    if int(n) < 1:
        raise ValueError(f"set_threads needs at least one thread, got {n}")
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    n = min(int(n), int(cap)) if cap.isdigit() and int(cap) > 0 else int(n)
    torch.set_num_threads(n)
    return n


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
    return int(seed)


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and every GPU)."""
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def make_generator(seed: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `seed`.

    The generator stays on the CPU whatever the compute device: `randn` draws
    on it and moves the result, so a seed gives the same noise everywhere.
    """
    return torch.Generator(device="cpu").manual_seed(_check_seed(seed))


def randn(
    shape: int | Sequence[int] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the generator's device and moved to `device`.

    Without a generator the global torch RNG on the CPU is used (see
    `seed_everything`). `device` defaults to the CPU.
    """
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of ints, got {shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints, got {shape}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=dtype)
    return noise.to(device if device is not None else "cpu")
