"""How task identity reaches the MTA layers: one context, set by the model, read by layers.

The backbone's own forward code is never changed. `MTAModel.forward` / `generate` open a
`routing(...)` context holding the task id of every example; each MTA layer reads it. During
beam search or sampling the backbone sees the batch expanded (each example repeated
`num_beams` times, consecutively); `RoutingContext.rows` expands per-example tensors to match.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch


class RoutingError(RuntimeError):
    """An MTA layer ran without task ids, or with a batch it cannot align to them."""


@dataclass
class RoutingContext:
    task_ids: torch.Tensor  # (B,) long
    # Tokens that an input router may pool over, per stack ("main" or "decoder"): (B, T).
    pool_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    # Pooled layer inputs from the first call of each layer, reused during cached decoding.
    pooled_cache: dict[int, torch.Tensor] = field(default_factory=dict)

    def rows(self, tensor: torch.Tensor, batch_rows: int) -> torch.Tensor:
        """Repeat a per-example tensor so that it lines up with an expanded batch."""
        examples = tensor.shape[0]
        if batch_rows == examples:
            return tensor
        if batch_rows % examples:
            raise RoutingError(
                f"batch of {batch_rows} rows cannot be aligned with {examples} task ids"
            )
        # generate() repeats each example consecutively (repeat_interleave), beams stay together.
        return tensor.repeat_interleave(batch_rows // examples, dim=0)


_current: ContextVar[RoutingContext | None] = ContextVar("alter_routing", default=None)


@contextmanager
def routing(
    task_ids: torch.Tensor, pool_masks: dict[str, torch.Tensor] | None = None
) -> Iterator[RoutingContext]:
    context = RoutingContext(task_ids=task_ids, pool_masks=dict(pool_masks or {}))
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_routing() -> RoutingContext:
    context = _current.get()
    if context is None:
        raise RoutingError(
            "an MTA layer ran outside MTAModel.forward/generate: call the MTAModel, "
            "or wrap the backbone call in alter.mta.routing(task_ids)"
        )
    return context
