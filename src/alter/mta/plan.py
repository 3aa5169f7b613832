"""The expert plan of an MTA model, resolved once from `model.mta` and the tasks: how many
experts each MTA layer holds, which one each task trains in stage 1, and whether a shared
expert (last) serves every task. Injection, the gates and per-expert learning rates read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alter.mta.config import MTAConfig

if TYPE_CHECKING:
    from alter.data.task import Task


@dataclass(frozen=True)
class ExpertPlan:
    assignment: torch.Tensor  # (tasks,) long: each task's routed expert in stage 1
    routed: int  # routed experts per layer (K)
    shared: bool = False  # one more expert, last, that every task uses

    @property
    def num_tasks(self) -> int:
        return int(self.assignment.shape[0])

    @property
    def total(self) -> int:
        """Experts per layer, the shared one included: the leading size of expert weights."""
        return self.routed + int(self.shared)

    def row_shares(self, task_rates: Sequence[float]) -> torch.Tensor:
        """The share of a mixed batch's rows that each expert serves in stage 1, (total,),
        given each task's mixture rate (in task order); the shared expert serves them all."""
        shares = torch.zeros(self.total)
        for task_id, rate in enumerate(task_rates):
            shares[int(self.assignment[task_id])] += rate
        if self.shared:
            shares[-1] = 1.0
        return shares


def task_group(task: Task) -> str:
    """The groups of ALTER's released code: generation, sentence-pair and single-sentence tasks."""
    if task.kind == "generation":
        return "generation"
    return "pair" if len(task.spec.inputs) > 1 else "single"


def plan_experts(tasks: Sequence[Task], config: MTAConfig) -> ExpertPlan:
    """`config.assignment`: one expert per task, tasks grouped by kind, or {task: expert}."""
    rule = config.assignment
    names = [task.name for task in tasks]
    if rule == "one_per_task":
        experts = list(range(len(tasks)))
    elif rule == "by_kind":
        groups = list(dict.fromkeys(task_group(task) for task in tasks))
        experts = [groups.index(task_group(task)) for task in tasks]
    else:
        missing = [name for name in names if name not in rule]
        if missing:
            raise ValueError(f"model.mta.assignment: no expert for task(s) {', '.join(missing)}")
        experts = [rule[name] for name in names]
    count = config.num_experts or max(experts) + 1
    if max(experts) >= count:
        raise ValueError(
            f"model.mta.num_experts={count} is fewer than the experts that the assignment needs "
            f"({max(experts) + 1}); raise num_experts or set model.mta.assignment=by_kind")
    return ExpertPlan(torch.tensor(experts), count, config.shared_expert)
