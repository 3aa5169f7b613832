"""Training on several processes with PyTorch's DistributedDataParallel.

`alter train` reads the variables that `torchrun` and `accelerate launch` set (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without them it is one process and
nothing here does anything. Every rank builds the same batch plan from the seed and takes
its own rows of each global batch (`rank::world_size`), so the data is split without
overlap and the global batch is the config's whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from alter.config import DistributedConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of one training run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, checkpoints and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every world_size-th one, starting at its rank."""
        return list(items[self.rank:: self.world_size])

    def unshard(self, local: Sequence[T], total: int) -> list[T]:
        """Every rank's `shard` results, put back in the order of the sharded items."""
        if not self.distributed:
            return list(local)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, list(local))
        merged: list[Any] = [None] * total
        for rank, part in enumerate(parts):
            merged[rank:: self.world_size] = part
        return merged

    def from_main(self, value: T) -> T:
        """The main process's `value` on every rank (what it read from its disk)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a copy; the input is unchanged)."""
        values = values.detach().clone()
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Ranks()


def start(config: DistributedConfig, device: torch.device) -> Ranks:
    """Join the process group that the launcher describes (or stay one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    if not dist.is_initialized():
        backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        # Evaluation runs on every rank between training steps: allow it time.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout_s))
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str) -> torch.device:
    """`auto`: this process's GPU when there is one (LOCAL_RANK picks it), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but PyTorch sees no GPU here")
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The module that a training step calls: the model itself on one process, else the
    model under DDP, which averages the gradients of the trainable parameters over ranks.

    Built again for each stage: DDP registers its hooks on the parameters that require a
    gradient when it is built, and each stage trains different ones.
    """
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # An expert, a head or an adapter of a task missing from this rank's rows gets no
    # gradient in that step: DDP must look for such parameters.
    return DistributedDataParallel(model, find_unused_parameters=True)


@contextlib.contextmanager
def no_sync(engine: nn.Module, accumulating: bool) -> Iterator[None]:
    """Skip the gradient exchange on micro-batches before the last of an accumulated step."""
    if accumulating and hasattr(engine, "no_sync"):
        with engine.no_sync():
            yield
    else:
        yield
