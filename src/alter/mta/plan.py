"""The expert plan of an MTA model, resolved once from `model.mta` and the tasks: how many
experts each MTA layer holds, which one each task trains in stage 1, and whether a shared
expert (last) serves every task. Injection, the gates and per-expert learning rates read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alter.mta.config import MTAConfig


@dataclass(frozen=True)
class ExpertPlan:
    assignment: torch.Tensor  # (tasks,) long: each task's routed expert in stage 1
    routed: int  # routed experts per layer (K)
    shared: bool = False  # one more expert, last, that every task uses
    # Routed experts per group computed on its own (`MTAConfig.expert_groups`); () = one group.
    group_sizes: tuple[int, ...] = ()

    @property
    def groups(self) -> list[list[int]]:
        """The expert columns (of stacked weights and gate weights) of each group computed on
        its own, in order; the shared expert belongs to the first group (the model's original
        experts). One group of every column without `group_sizes`."""
        if len(self.group_sizes) <= 1:
            return [list(range(self.total))]
        starts = [sum(self.group_sizes[:i]) for i in range(len(self.group_sizes))]
        groups = [list(range(start, start + size)) for start, size in zip(starts, self.group_sizes)]
        if self.shared:
            groups[0].append(self.routed)
        return groups

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


def plan_experts(names: Sequence[str], groups: Sequence[str], config: MTAConfig) -> ExpertPlan:
    """The tasks' experts by `config.assignment`: one per task, one per group (`groups`: each
    task's kind, as ALTER's released code groups them), or {task name: expert}."""
    rule = config.assignment
    if rule == "one_per_task":
        experts = list(range(len(names)))
    elif rule == "by_kind":
        distinct = list(dict.fromkeys(groups))
        experts = [distinct.index(group) for group in groups]
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
    if config.expert_groups is not None and sum(config.expert_groups) != count:
        raise ValueError(f"model.mta.expert_groups {config.expert_groups} do not add up to the {count} experts")
    return ExpertPlan(torch.tensor(experts), count, config.shared_expert, tuple(config.expert_groups or ()))
