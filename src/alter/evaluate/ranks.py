"""The processes that share a run's work: each evaluates its share of the examples
(`shard`), and the main one gathers them (`unshard`). One process is `SINGLE`;
`alter.training.distributed.start` builds the others' `Ranks` from the launcher's variables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

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
