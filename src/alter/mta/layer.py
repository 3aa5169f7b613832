"""One MTA layer: y = FFN(x) + sum_k g_k(t, x) * E_k(x), attached to a backbone FFN by hooks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alter.mta.config import MTAConfig
from alter.mta.experts import GateSlot
from alter.mta.gate import TaskGate
from alter.mta.plan import ExpertPlan
from alter.mta.routing import current_routing


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return next(value for value in kwargs.values() if isinstance(value, torch.Tensor))


class MTALayer(nn.Module):
    """Gate + experts for one transformer block.

    A forward pre-hook on the FFN's first module (on the block itself for LoRA experts placed
    elsewhere, e.g. in attention) reads the task ids from the routing context and computes the
    gate weights (B, K); the experts then act according to their kind: bottleneck experts add
    their output after the FFN's last module, LoRA experts read the weights from a shared slot,
    FFN copies replace the FFN.
    """

    def __init__(self, index: int, stack: str, block: int, hidden_size: int, plan: ExpertPlan, config: MTAConfig):
        super().__init__()
        self.index = index  # position among the model's MTA layers
        self.block = block  # index of the transformer block in its stack
        self.stack = stack  # "main" (decoder-only / encoder) or "decoder" (of an encoder-decoder)
        self.gate = TaskGate(hidden_size, plan, config)
        self.slot = GateSlot()
        self.experts: nn.Module | None = None
        self._ffn_input: torch.Tensor | None = None

    # --- gate weights -------------------------------------------------------------------
    def _pooled_input(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the layer input over the routing tokens; (B, d).

        The first call within a routing context (training forward, or the prefill of
        generation) pools and caches; later calls (one new token each) reuse the cache.
        """
        context = current_routing()
        cached = context.pooled_cache.get(self.index)
        if cached is not None:
            return context.rows(cached, x.shape[0])
        mask = context.pool_masks.get(self.stack)
        if mask is None or mask.shape[1] != x.shape[1]:
            mask = torch.ones(x.shape[:2], device=x.device)
        mask = context.rows(mask, x.shape[0]).to(x.dtype)  # (B, T)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, d)
        context.pooled_cache[self.index] = pooled
        return pooled

    def _task_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's task, (B,) (beams and decoding rows included)."""
        context = current_routing()
        return context.rows(context.task_ids, x.shape[0])

    def gate_weights(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), each row's task (B,) -> (B, K), or (B, K + 1) with the shared expert's
        weight last."""
        pooled = self._pooled_input(x) if self.gate.uses_input else None
        return self.gate(task_ids, pooled)

    # --- hooks --------------------------------------------------------------------------
    def selected_experts(self, gates: torch.Tensor) -> torch.Tensor | None:
        """The experts each row computes, (B, m): those of its m largest weights when the
        gate weighs at most m of its K columns non-zero in every row and m < K; None (every
        expert, one dense matmul) when the gate is dense."""
        most = self.gate.most_selected
        if most >= gates.shape[1]:
            return None
        # In expert order (not topk's order of weights, whose ties fall either way): a row sums
        # its experts in the same order whatever K is, so that adding an expert to a model
        # leaves the other tasks' arithmetic as it was (alter.models.task_surgery).
        return gates.abs().topk(most, dim=1).indices.sort(dim=1).values  # (B, m)

    def before_experts(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _first_tensor(args, kwargs)
        task_ids = self._task_ids(x)
        self.slot.gates = self.gate_weights(x, task_ids)
        self.slot.selected = self.selected_experts(self.slot.gates)
        # Experts fused by attention read each row's task once the gates collaborate.
        self.slot.task_ids = None if bool(self.gate.fixed) else task_ids
        self._ffn_input = x

    def after_ffn(self, module: nn.Module, args: tuple, output: Any) -> Any:
        x, self._ffn_input = self._ffn_input, None
        return output + self.experts(x, self.slot.gates, self.slot.selected)

    def forward_copies(self, x: torch.Tensor) -> torch.Tensor:
        """Stands in for the FFN when the experts are FFN copies."""
        return self.experts(x, self.gate_weights(x, self._task_ids(x)))


class FFNCopies(nn.Module):
    """Takes the FFN's place in its block when the experts are full FFN copies."""

    def __init__(self, layer: MTALayer):
        super().__init__()
        self._layer = [layer]  # not a child: the layer is registered on the block already

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._layer[0].forward_copies(x)

