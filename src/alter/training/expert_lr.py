"""Per-expert learning rates: each expert steps as far as the rows routed to it justify.

In a mixed-task batch, a task's expert receives the gradient of that task's rows only, about
`rate x batch_size` of them, while a shared adapter receives all of them. Adam normalises the
size of every update, so at one learning rate a task expert takes as many full-size steps as
the shared adapter, each on a gradient several times noisier: over a stage it moves about as
far as a single-task model trained on every step, not on its task's share of the steps. With
`expert_lr: routed_share` each expert's steps are scaled by the share of the batch's rows it
serves (the summed mixture rates of the tasks assigned to it; 1 for a shared expert), so the
stage's `lr` is the learning rate of an expert that serves every row.

AdamW's update is linear in the learning rate, so scaling the update of an expert's slice of
the stacked parameters after the step is exactly a learning rate per expert.

With one task per stage-1 batch (`batches: one_task`) the other tasks' experts get a zero
gradient, and Adam would still move them on their momentum, at a size that their rare
gradients inflate (about sqrt(1 / rate) times their own steps): `routed_experts` gives the
scale (1 for the experts the batch's tasks route to, 0 for the rest) that keeps them still.
A joint stage with one task per batch keeps them still too: there the batch's task reaches the
other experts through small learned gate weights, a gradient that Adam would scale up to a full
step in that task's direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alter.models.contract import TrainableModel


def routed_shares(model: TrainableModel, task_names: Sequence[str], rates: Sequence[float]) -> torch.Tensor | None:
    """The share of a batch's rows that each expert serves in stage 1, (K,) or (K + 1,) with
    the shared expert last; None for a model without MTA experts."""
    plan = model.expert_plan
    if plan is None or not model.mta_layers:
        return None
    by_task = dict(zip(task_names, rates))
    return plan.row_shares([by_task.get(task.name, 0.0) for task in model.tasks])


def routed_experts(model: TrainableModel, task_names: Sequence[str], tasks: set[str]) -> torch.Tensor | None:
    """(K,) or (K + 1,): 1 for each expert that stage-1 rows of `tasks` route to, 0 for the
    others; None for a model without MTA experts."""
    shares = routed_shares(model, task_names, [1.0 if name in tasks else 0.0 for name in task_names])
    return None if shares is None else (shares > 0).float()


class ExpertStepScaler:
    """Scales each expert's slice of the last optimizer step by its share.

    Call `before_step()` right before `optimizer.step()` and `after_step()` right after it.
    Every expert parameter is stacked with the expert index first (K, ...).
    """

    def __init__(self, params: Sequence[nn.Parameter], shares: torch.Tensor):
        if any(param.shape[0] != shares.shape[0] for param in params):
            raise ValueError(f"expert parameters stack {sorted({p.shape[0] for p in params})} experts; "
                             f"the gates route to {shares.shape[0]}")
        self.params = list(params)
        self.shares = shares
        self._before: list[torch.Tensor] = []

    def before_step(self) -> None:
        self._before = [param.detach().clone() for param in self.params]

    @torch.no_grad()
    def after_step(self) -> None:
        for param, before in zip(self.params, self._before):
            scale = self.shares.to(param.device, param.dtype).view(-1, *([1] * (param.dim() - 1)))  # (K, 1, ...)
            param.copy_(before + (param - before) * scale)
        self._before = []
