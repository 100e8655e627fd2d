"""Where tensors live and where random numbers come from.

One helper picks the device (CUDA, then MPS, then CPU); the others make a
seed reproduce the same noise on every device. Noise is always drawn on the
CPU from a `torch.Generator` and then moved, as diffusers' `randn_tensor`
does, so seed 0 gives the same starting image on a laptop and on a GPU.
The per-item helpers (`per_item_rand`, `per_item_randint`, `per_item_randn`)
draw a loss's numbers so that a data-parallel process (`batch_shard`) gets
exactly the rows one process would.
"""

from __future__ import annotations

import contextvars
import operator
import os
import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

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


# ---------------------------------------------------------------------------
# Random numbers per training step: a seed that is a pure function of (seed, step), so a
# resumed run draws exactly what an uninterrupted one would.

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed mixed from (seed, step, stream) without Python's salted `hash`.

    Stream 0 is the data (`make_batch`), stream 1 the loss's generator.
    Paper: Steele et al. 2014 (SplitMix64)
    """
    x = _splitmix64(int(seed) & _MASK64)
    x = _splitmix64(x ^ (int(step) & _MASK64))
    x = _splitmix64(x ^ (int(stream) & _MASK64))
    return x >> 1


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded with `step_seed(seed, step, stream)`."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


# ---------------------------------------------------------------------------
# Per-item random numbers under data parallelism. When P processes share a global batch of N rows,
# process r holds the contiguous rows [a, b) = [r N / P, (r + 1) N / P). A number drawn per item
# (a timestep, a noise tensor, a caption-dropout uniform) must be the number the one-process run
# draws for that row. So every process draws all N rows from the same generator and keeps its own:
# the same generator state on every process, the same numbers as one process, rows that line up.
# (Drawing only b - a rows would not do: torch's CPU randn fills blocks of 16 in a way that depends
# on the total size, and the generator would sit at another state for the next draw.)
# Outside `batch_shard` the helpers make exactly the torch calls a one-process loss always made.


@dataclass(frozen=True)
class BatchShard:
    """This process holds rows [start, stop) of a global batch of `total` rows."""

    start: int
    stop: int
    total: int

    @property
    def size(self) -> int:
        return self.stop - self.start


_SHARD: contextvars.ContextVar[BatchShard | None] = contextvars.ContextVar("diffusion_notes_batch_shard",
                                                                            default=None)


def shard_rows(total: int, world_size: int, rank: int) -> BatchShard:
    """The contiguous rows [rank N/P, (rank + 1) N/P) of a global batch of N = `total` that process `rank` of P holds.

    Raises ValueError unless N divides evenly by P: equal shards are what make the average of the
    processes' mean losses (and gradients) the global batch's mean.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}] for {world_size} processes, got {rank}")
    if total < 1 or total % world_size:
        raise ValueError(
            f"the global batch size {total} must be a positive multiple of the number of processes "
            f"({world_size}), so that every process holds the same number of rows; "
            f"use --batch-size {max(world_size, total - total % world_size)} for example"
        )
    per = total // world_size
    return BatchShard(rank * per, (rank + 1) * per, total)


@contextmanager
def batch_shard(start: int, stop: int, total: int):
    """Inside, the per-item helpers (`per_item_rand`, `per_item_randint`, `per_item_randn`) draw `total` rows and keep [start, stop).

    The training loop enters it around the loss of a data-parallel step; nothing else needs to.
    """
    if not 0 <= start < stop <= total:
        raise ValueError(f"a shard must be rows [start, stop) with 0 <= start < stop <= total, "
                         f"got [{start}, {stop}) of {total}")
    token = _SHARD.set(BatchShard(int(start), int(stop), int(total)))
    try:
        yield _SHARD.get()
    finally:
        _SHARD.reset(token)


def current_shard() -> BatchShard | None:
    """The shard set by `batch_shard`, or None in a one-process run."""
    return _SHARD.get()


def _global_rows(batch_size: int) -> tuple[int, slice | None]:
    """(rows to draw, rows to keep) for a per-item draw of `batch_size` local rows."""
    shard = _SHARD.get()
    if shard is None:
        return batch_size, None
    if batch_size != shard.size:
        raise ValueError(
            f"a per-item draw for {batch_size} rows, but this process holds rows [{shard.start}, {shard.stop}) "
            f"({shard.size} rows) of a global batch of {shard.total}; per-item numbers must be drawn for "
            f"the batch the process holds"
        )
    return shard.total, slice(shard.start, shard.stop)


def per_item_rand(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) uniforms in [0, 1), one per item, on the generator's device (CPU without one).

    Outside a shard: `torch.rand(B, generator=generator, device=generator's device)`. Inside
    `batch_shard(a, b, N)`: the same call for N rows, then rows [a, b) (see the section comment).
    """
    n, keep = _global_rows(batch_size)
    draw_device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, generator=generator, device=draw_device)  # (N,)
    return u if keep is None else u[keep]  # (B,)


def per_item_randint(low: int, high: int, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) integers in [low, high), one per item, on the generator's device: `torch.randint(low, high, (B,), ...)`.

    Inside `batch_shard(a, b, N)` it draws N and keeps rows [a, b).
    """
    n, keep = _global_rows(batch_size)
    draw_device = generator.device if generator is not None else "cpu"
    values = torch.randint(low, high, (n,), generator=generator, device=draw_device)  # (N,)
    return values if keep is None else values[keep]  # (B,)


def per_item_randn(
    shape: int | Sequence[int] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`randn(shape, ...)` whose first dimension is the batch: rows [a, b) of the (N, ...) draw inside a shard."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape:
        raise ValueError("a per-item draw needs a batch dimension, got shape ()")
    n, keep = _global_rows(operator.index(shape[0]))
    noise = randn((n, *shape[1:]), generator, device=device, dtype=dtype)  # (N, ...)
    return noise if keep is None else noise[keep]  # (B, ...)
