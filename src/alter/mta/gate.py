"""Gates: how much each example draws on each expert, g(t, x) = softmax((w_t + R(x)) / tau)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alter.mta.config import MTAConfig
from alter.mta.plan import ExpertPlan


class TaskGate(nn.Module):
    """Task-level logits `w_t`, an optional input router `R`, temperature and top-k.

    While `fixed` is set (stage 1) the gate ignores its logits and returns the one-hot stage-1
    assignment of each task to its expert. Afterwards a `softmax` gate returns
    softmax((w_t + R(x)) / tau); a `residual` gate returns one-hot(own expert) + w_t + R(x),
    whose learned part starts at 0, so that leaving stage 1 does not change the model.

    A gate pruned to its top `kept` experts (`prune`, after training) keeps each row's
    `kept` largest weights, scaled to the sum of all of them, and zeroes the rest, so that
    each row computes `kept` experts whatever K is.

    With a shared expert, one more column comes last: weight 1 in stage 1 and under a softmax
    gate (which spreads its weight over the routed experts only); under a residual gate
    1 + s_t, a learned weight per task starting at 0, so stage 2 can also learn how much each
    task takes from the shared expert against its own.
    """

    def __init__(self, hidden_size: int, plan: ExpertPlan, config: MTAConfig):
        super().__init__()
        num_tasks, num_experts, assignment = plan.num_tasks, plan.routed, plan.assignment
        self.num_experts = num_experts
        self.temperature = config.temperature
        self.top_k = config.top_k
        self.task_logits = (
            nn.Parameter(torch.zeros(num_tasks, num_experts)) if "task" in config.gate else None
        )
        self.router = nn.Linear(hidden_size, num_experts, bias=False) if "input" in config.gate else None
        self.shared_expert = plan.shared
        self.shared_logits = (
            nn.Parameter(torch.zeros(num_tasks)) if plan.shared and "task" in config.gate else None
        )
        if self.router is not None:
            nn.init.zeros_(self.router.weight)  # starts as pure task gating
        self.register_buffer("assignment", assignment.clone(), persistent=True)  # (num_tasks,)
        self.register_buffer("fixed", torch.tensor(True), persistent=True)
        # Set by `start_collaboration`; saved, so that a loaded model combines its experts as
        # it was trained to. (A checkpoint without it predates residual gates: softmax.)
        self.register_buffer("residual", torch.tensor(True), persistent=True)
        # Set by `prune`; 0: every expert keeps its weight. (A checkpoint without it: unpruned.)
        self.register_buffer("kept", torch.tensor(0), persistent=True)

    @property
    def uses_input(self) -> bool:
        return self.router is not None and not bool(self.fixed)

    @property
    def most_selected(self) -> int:
        """The most columns of the weights (the shared expert's included) that a row may
        weigh non-zero: one expert in stage 1, `top_k` of a softmax gate, `kept` after
        pruning, else all."""
        if bool(self.fixed):
            routed = 1
        elif int(self.kept):
            routed = min(int(self.kept), self.num_experts)
        elif not bool(self.residual) and self.top_k is not None:
            routed = min(self.top_k, self.num_experts)
        else:
            routed = self.num_experts
        return routed + int(self.shared_expert)

    def stage1_weights(self, task_ids: torch.Tensor) -> torch.Tensor:
        """task_ids (B,) -> the stage-1 gate weights, (B, K) or (B, K + 1) with the shared expert."""
        own = F.one_hot(self.assignment[task_ids], self.num_experts).float()  # (B, K)
        return self._with_shared(own, task_ids, learned=False)

    def _with_shared(self, gates: torch.Tensor, task_ids: torch.Tensor, learned: bool) -> torch.Tensor:
        """gates (B, K) -> (B, K + 1) with the shared expert's weight last; unchanged without one."""
        if not self.shared_expert:
            return gates
        shared = gates.new_ones(gates.shape[0], 1)  # (B, 1)
        if learned and self.shared_logits is not None:
            shared = shared + self.shared_logits[task_ids, None]
        return torch.cat([gates, shared], dim=-1)

    def forward(self, task_ids: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        """task_ids (B,), pooled (B, d) or None -> gate weights (B, K), and the shared expert's
        last when there is one (a softmax gate's routed weights sum to 1)."""
        own = F.one_hot(self.assignment[task_ids], self.num_experts).float()  # (B, K)
        if bool(self.fixed):
            return self._with_shared(own, task_ids, learned=False)
        logits = torch.zeros(task_ids.shape[0], self.num_experts, device=task_ids.device)
        if self.task_logits is not None:
            logits = logits + self.task_logits[task_ids]
        if self.router is not None:
            logits = logits + self.router(pooled.to(self.router.weight.dtype))
        if bool(self.residual):
            return self._with_shared(self._pruned(own + logits), task_ids, learned=True)
        logits = logits / self.temperature
        if self.top_k is not None and self.top_k < self.num_experts:
            keep = logits.topk(self.top_k, dim=-1).indices  # (B, k); ties broken by index
            logits = torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
        return self._with_shared(self._pruned(logits.softmax(dim=-1)), task_ids, learned=False)

    def _pruned(self, weights: torch.Tensor) -> torch.Tensor:
        """weights (B, K) -> each row's `kept` largest (by magnitude), scaled to the row's
        total weight, the rest zero; unchanged when the gate is not pruned."""
        kept = int(self.kept)
        if not kept or kept >= self.num_experts:
            return weights
        keep = weights.abs().topk(kept, dim=1).indices  # (B, kept)
        pruned = torch.zeros_like(weights).scatter(1, keep, weights.gather(1, keep))  # (B, K)
        total, kept_total = weights.sum(1, keepdim=True), pruned.sum(1, keepdim=True)  # (B, 1)
        cancels = kept_total.abs() <= 1e-6  # kept weights that cancel out stay as they are
        scale = torch.where(cancels, torch.ones_like(total), total / kept_total.masked_fill(cancels, 1.0))
        return pruned * scale

    @torch.no_grad()
    def prune(self, kept: int) -> None:
        """From now on every row draws on its `kept` largest gate weights only (the shared
        expert, if any, besides them); a stage-1 gate is left as it is (one expert already)."""
        if kept < 1:
            raise ValueError(f"a gate keeps at least one expert, not {kept}")
        self.kept.fill_(kept)

    def tie_to(self, other: TaskGate) -> None:
        """Learn through `other`'s task and shared-expert weights (and input router) from now
        on, so that one set of numbers gates every tied layer."""
        if other is self:
            return
        if self.num_experts != other.num_experts or bool(self.residual) != bool(other.residual):
            raise ValueError("tied gates need the same experts and collaboration")
        self.task_logits, self.shared_logits, self.router = other.task_logits, other.shared_logits, other.router

    @torch.no_grad()
    def start_collaboration(self, how: str = "residual", own_weight: float = 0.8) -> None:
        """Leave the fixed one-hot assignment for learned gates.

        `residual`: the learned weights start at 0, so the gate is the one-hot assignment
        itself, and the gradient with respect to each other expert's weight is already
        non-zero. `softmax` cannot start there (its logits would be infinite): each task keeps
        `own_weight` on its stage-1 expert and spreads the rest evenly.
        """
        if how == "residual" and self.top_k is not None:
            raise ValueError("top_k selects experts of a softmax gate; use collaboration=softmax")
        self.fixed.fill_(False)
        self.kept.zero_()  # a collaboration learns over every expert
        self.residual.fill_(how == "residual")
        if self.shared_logits is not None:
            self.shared_logits.zero_()
        if self.task_logits is None:
            return
        if how == "residual":
            self.task_logits.zero_()
            return
        if self.num_experts == 1:
            return
        other = (1.0 - own_weight) / (self.num_experts - 1)
        self.task_logits.fill_(math.log(other) * self.temperature)
        rows = torch.arange(self.task_logits.shape[0], device=self.task_logits.device)
        self.task_logits[rows, self.assignment] = math.log(own_weight) * self.temperature

    @property
    def collaboration(self) -> str | None:
        """How these gates collaborate (`residual` or `softmax`), or None while they are the
        fixed stage-1 assignment."""
        if bool(self.fixed):
            return None
        return "residual" if bool(self.residual) else "softmax"

    def refuses_rows(self, kind: str, collaboration: str) -> str | None:
        """Why a stage of `kind` cannot train added rows alone over these gates, or None when
        it can (`begin_rows`; asked before any training starts)."""
        if kind == "stage1":
            return None
        if bool(self.fixed):
            return ("the model's own tasks were trained in stage 1 only, so their gates are fixed; a "
                    "collaboration for the added task alone would change how they are computed. Train the added "
                    "task's stage 1 only")
        if collaboration != self.collaboration:
            return f"collaboration={collaboration}, but the model's gates are {self.collaboration}; use the same"
        return None

    @torch.no_grad()
    def begin_rows(self, task_ids: list[int], kind: str, collaboration: str, own_weight: float) -> None:
        """Begin a stage of `kind` (a StageConfig's) for the rows of `task_ids` alone (tasks
        added to a trained model; the others' rows are left as they are). Stage 1 draws on
        each task's own expert only: a fixed gate's one-hot, a residual gate's row at 0, a
        softmax row of -inf but its own expert (as `task_surgery` makes it). A collaboration
        starts its rows as `start_collaboration` starts every row; it needs gates that
        collaborate already, of the same kind (`refuses_rows`)."""
        refusal = self.refuses_rows(kind, collaboration)
        if refusal:
            raise ValueError(refusal)
        if kind == "stage1":
            return
        if bool(self.residual) or self.task_logits is None or self.num_experts == 1:
            return  # a residual row at 0 is its own expert: the collaboration's start
        other = (1.0 - own_weight) / (self.num_experts - 1)
        for task_id in task_ids:
            self.task_logits[task_id] = math.log(other) * self.temperature
            self.task_logits[task_id, self.assignment[task_id]] = math.log(own_weight) * self.temperature
