"""Add a task to a trained MTA model without touching the others.

Each task owns its expert (a slice of every stacked expert weight), its gate row and its
head. `with_task_added` builds the same model with one more task: every stacked expert
weight gains one slice, for the new task's expert, placed after the routed experts (before a
shared expert); every gate gains a row for the new task and a column for its expert, in
which every old task's weight is exactly zero (a residual gate's learned part 0, a softmax
gate's logit -inf, an input router's output row 0). So an old row computes what it computed
before plus exact zeros: its logits, labels and generated tokens are the same
(`tests/test_task_surgery.py` checks them bit for bit).
"""

from __future__ import annotations

import torch

from alter.data.task import Task
from alter.models.mta_model import MTAModel


class TaskSurgeryError(ValueError):
    """A task cannot be added to (or removed from) this model as asked."""


def with_task_added(model: MTAModel, task: Task) -> MTAModel:
    """A new model: `model`'s tasks, weights and gates, and `task` with a fresh expert, gate
    row and head (untrained), drawing on its own expert alone until a collaboration stage;
    training it (`alter.train`) changes the new task's weights alone (`changing_tasks`).
    `model` itself is left as it was."""
    _check_addable(model, task)
    plan = model.expert_plan
    routed = plan.routed
    names = [old.name for old in model.tasks]
    assignment = {name: int(expert) for name, expert in zip(names, plan.assignment.tolist())}
    assignment[task.name] = routed  # the new expert, after the routed ones
    groups = [*(model.config.mta.expert_groups or [routed]), 1]  # the old experts keep their arithmetic
    mta = model.config.mta.model_copy(update={"num_experts": routed + 1, "assignment": assignment,
                                              "expert_groups": groups})
    grown = MTAModel(model.config.model_copy(update={"mta": mta}), [*model.tasks, task])
    grown.label_offsets = dict(model.label_offsets)
    state = grown.state_dict()
    old_state = model.state_dict()
    with torch.no_grad():
        for name in model.trained_state():
            state[name].copy_(_grown(name, old_state[name], state[name], routed, plan.shared, len(model.tasks)))
        for layer in grown.mta_layers:
            gate = layer.gate
            if gate.task_logits is not None and not bool(gate.residual):  # softmax: exp(-inf) is exactly 0
                gate.task_logits[: len(model.tasks), routed] = float("-inf")
                gate.task_logits[len(model.tasks)] = float("-inf")  # the new task: its own expert alone
                gate.task_logits[len(model.tasks), routed] = 0.0
    grown.changing_tasks = (task.name,)  # training changes its weights alone
    return grown.train(model.training)


def _check_addable(model: MTAModel, task: Task) -> None:
    if not isinstance(model, MTAModel) or not model.mta_layers:
        raise TaskSurgeryError("only a model with MTA experts can take a task without touching the others "
                               "(a shared LoRA or a Bi-LSTM would have to be retrained on every task)")
    if model.config.mta.kind == "ffn_copy":
        raise TaskSurgeryError("mta.kind=ffn_copy computes all its experts in one vmap: a new expert would change "
                               "the others' arithmetic; add tasks to models with bottleneck or LoRA experts")
    if task.name in model.task_index:
        raise TaskSurgeryError(f"the model already has a task '{task.name}'; to retrain it, replace it")
    if model.backbone_trained:
        raise TaskSurgeryError("this model's backbone was trained: every task depends on it, so a new task "
                               "cannot be trained without changing the others")


def _grown(name: str, old: torch.Tensor, new: torch.Tensor, routed: int, shared: bool, tasks: int) -> torch.Tensor:
    """The old tensor `old` placed in the grown model's `new` (which holds the new task's
    fresh values where `old` has nothing)."""
    if old.shape == new.shape:  # heads of old tasks, scalar gate buffers, biases
        return old
    out = new.clone()
    if name.endswith("task_logits"):  # (tasks, K) -> (tasks + 1, K + 1); a softmax gate's -inf: below
        out[:tasks, :routed] = old
        out[:tasks, routed] = 0.0
        return out
    if name.endswith(("shared_logits", "assignment")):  # (tasks,) -> (tasks + 1,)
        out[:tasks] = old
        return out
    if name.endswith("router.weight"):  # (K, d) -> (K + 1, d): the new expert's output 0
        out[:routed] = old
        out[routed] = 0.0
        return out
    # A stacked expert weight (K [+ 1], ...) -> (K + 1 [+ 1], ...): the new slice stays fresh.
    out[:routed] = old[:routed]
    if shared:
        out[routed + 1] = old[routed]
    return out
