"""Data parallelism: torch.distributed and DistributedDataParallel, set up by a launcher.

The same `train` command runs data-parallel, unchanged, under a launcher that sets WORLD_SIZE,
RANK and LOCAL_RANK (`torchrun --nproc-per-node 2 -m diffusion_notes train toy2d`, or
`accelerate launch`): `join_world` joins the process group (gloo on the CPU, nccl on CUDA with
the GPU of LOCAL_RANK) and `wrap` puts the recipe's loss inside torch's DistributedDataParallel,
which averages the gradients. The rule that makes P processes compute the losses of one process
at the same global batch N (to float rounding, not bit for bit):

- every process builds the whole batch, `recipe.make_batch(step, N, seed)` (a pure function), and
  keeps its own contiguous rows [r N/P, (r + 1) N/P) (`shard_batch`);
- every random number the loss draws per item (the timesteps, the noise, the caption-dropout
  uniforms) is drawn for all N rows from the same generator and sliced (`rng.batch_shard` and
  the `rng.per_item_*` helpers);
- the loss is a mean over items, so the mean of the P shards' gradients is the global batch's
  gradient. N must divide by P (else a ValueError).

Not covered by the rule: losses that compare items across the batch (CLIP's contrastive loss sees
only its shard's pairs), BatchNorm on the CPU (each process normalises its own rows, with a
warning; the classifier's losses differ by up to 2.5e-2 over 6 steps; on CUDA it becomes
SyncBatchNorm, not measured here), dropout and any draw made outside the per-item helpers (today
in prior_loss, upsampler_loss and the VAE's posterior sample): they train correctly, but no longer
equal one process's numbers.

Rank 0 alone writes the checkpoints, the logs and the progress bar. Ctrl-C (or SIGTERM) on any
rank and --max-seconds stop all ranks after the same step (`World.should_stop`). The logged loss
is the global batch's, the mean over the processes (`World.mean`).

Paper: Li et al. 2020 (PyTorch Distributed: Experiences on Accelerating Data Parallel Training)
Paper: Goyal et al. 2017 (Accurate, Large Minibatch SGD), BatchNorm statistics per worker
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffusion_notes.rng import BatchShard, batch_shard, shard_rows


class StopFlag:
    """Turns the first Ctrl-C (and, given it, SIGTERM) into a request to stop at the end of the current step."""

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

    def shard(self, batch_size: int) -> BatchShard | None:
        """This process's rows of a global batch of `batch_size` (None in one process; a ValueError if uneven)."""
        return shard_rows(batch_size, self.size, self.rank) if self.parallel else None

    def stop_flag(self) -> StopFlag:
        """Ctrl-C stops after the current step; data-parallel, SIGTERM too (what torchrun and schedulers send)."""
        return StopFlag((signal.SIGINT, signal.SIGTERM) if self.parallel else (signal.SIGINT,))

    def mean(self, loss: torch.Tensor) -> float:
        """The loss of the global batch: the mean over the processes of each one's mean loss."""
        if not self.parallel:
            return loss.item()
        total = torch.tensor([loss.item()], dtype=torch.float64, device=loss.device)
        dist.all_reduce(total)
        return total.item() / self.size

    def should_stop(self, stop: StopFlag, out_of_time: bool) -> tuple[bool, bool]:
        """(stop now, out of time), each true on every process if true on any, so that all stop after one step."""
        if not self.parallel:
            return stop.requested, out_of_time
        flags = torch.tensor([float(stop.requested), float(out_of_time)], dtype=torch.float64)
        dist.all_reduce(flags)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def barrier(self) -> None:
        """Wait for every process (rank 0 may still be writing a checkpoint); nothing in one process."""
        if self.parallel:
            dist.barrier()


ONE_PROCESS = World()


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


def wrap(model: nn.Module, loss, world: World,
         shard: BatchShard | None) -> Callable[[dict, torch.Generator], torch.Tensor]:
    """`loss(model, batch, generator)` as a function of (batch, generator); in a data-parallel run through DDP.

    DDP's backward averages the gradients over the processes; its per-item draws cover all N rows
    of the global batch and keep this process's (`rng.batch_shard`).
    """
    if not world.parallel:
        return lambda batch, generator: loss(model, batch, generator)
    # device_ids=None: the batch is already on the model's device. static_graph: the same parameters take
    # part in every step, found on the first (some may be unused); frozen ones are not DDP's.
    ddp = DistributedDataParallel(_RecipeLoss(model, loss), device_ids=None, static_graph=True)

    def parallel_loss(batch, generator):
        with batch_shard(shard.start, shard.stop, shard.total):  # per-item draws: all N rows, ours kept
            return ddp(batch, generator)

    return parallel_loss


def sync_batchnorm(model: nn.Module, world: World, device: torch.device, name: str) -> nn.Module:
    """BatchNorm over the global batch: SyncBatchNorm on CUDA; on the CPU (unsupported by torch) a warning."""
    if not world.parallel or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same parameter and buffer tensors
    if world.main:
        warnings.warn(
            f"{name} has BatchNorm layers: on the CPU each of the {world.size} processes normalises its own "
            f"rows (torch's SyncBatchNorm needs a GPU), so the losses will not equal a one-process run's",
            stacklevel=4,
        )
    return model


def shard_batch(batch: dict, shard: BatchShard | None) -> dict:
    """This process's rows [start, stop) of each tensor (first dimension) or list in `batch` that has `total` rows.

    Dicts inside the batch (the classifier's targets) are sharded the same way; other values (a
    tensor shared by the whole batch, a number) are passed unchanged. With no shard, the whole batch.
    """
    if shard is None:
        return batch

    def rows(value):
        if isinstance(value, dict):
            return {key: rows(v) for key, v in value.items()}
        if torch.is_tensor(value) and value.ndim >= 1 and value.shape[0] == shard.total:
            return value[shard.start:shard.stop]
        if isinstance(value, (list, tuple)) and len(value) == shard.total:
            return value[shard.start:shard.stop]
        return value

    return rows(batch)
