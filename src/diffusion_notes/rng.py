"""Random streams for training: a seed per step, and per-item draws that a data-parallel process slices.

`step_seed(seed, step, stream)` is a pure function of its arguments, so a resumed run draws exactly
what an uninterrupted one would. The per-item helpers (`per_item_rand`, `per_item_randint`,
`per_item_randn`) draw a loss's numbers so that a data-parallel process (inside `batch_shard`) gets
exactly the rows one process would.
"""

from __future__ import annotations

import contextvars
import operator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from diffusion_notes.device import randn

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
    """Inside, the per-item helpers (`per_item_rand`, `per_item_randint`, `per_item_randn`) draw `total` rows
    and keep [start, stop).

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
