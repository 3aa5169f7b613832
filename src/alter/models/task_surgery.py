"""Add or remove a task of a trained MTA model without touching the others.

Each task owns its expert (a slice of every stacked expert weight), its gate row and its
head. The model is rebuilt with one task more or fewer and every weight that stays is copied
to its new place; what makes the others' answers the same to the bit
(`tests/test_task_surgery.py` checks labels, probabilities and generated text):

- adding: the new expert is computed in a group of its own (`mta.expert_groups`), after the
  model's own experts, which keep the matrix shapes they had; every old task weighs it
  exactly zero (a residual gate's learned part 0, a softmax gate's logit -inf, an input
  router's output 0), so an old row gets its old result plus exact zeros;
- removing: the task's gate row and head go. Its expert goes too where that changes nobody's
  arithmetic: an expert added later (a group of its own), or a model whose gates are still
  the stage-1 assignment (each row computes its own expert alone). An expert that the other
  tasks' collaborating gates draw on is refused (their answers would change); one they
  weigh zero stays in place, zeroed and unassigned, so that its group keeps its shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alter.data.task import Task
from alter.models.mta_model import MTAModel
from alter.models.quantized import quantize_setting
from alter.mta import ExpertModule


class TaskSurgeryError(ValueError):
    """A task cannot be added to (or removed from) this model as asked."""


def with_task_added(model: MTAModel, task: Task) -> MTAModel:
    """A new model: `model`'s tasks, weights and gates, and `task` with a fresh expert, gate
    row and head (untrained), drawing on its own expert alone until a collaboration stage;
    training it (`alter.train`) changes the new task's weights alone (`changing_tasks`).
    `model` itself is left as it was."""
    _check_surgery(model)
    if task.name in model.task_index:
        raise TaskSurgeryError(f"the model already has a task '{task.name}'; to retrain it, replace it")
    routed, old_tasks = model.expert_plan.routed, len(model.tasks)
    assignment = _assignment(model)
    assignment[task.name] = routed  # the new expert, after the routed ones
    experts = list(range(routed)) + [None] + ([routed] if model.expert_plan.shared else [])  # new -> old
    groups = [*(model.config.mta.expert_groups or [routed]), 1]  # the old experts keep their arithmetic
    grown = _rebuilt(model, [*model.tasks, task], assignment, routed + 1, groups,
                     list(range(old_tasks)) + [None], experts)
    with torch.no_grad():
        for gate in (layer.gate for layer in grown.mta_layers):
            if gate.task_logits is not None and not bool(gate.residual):  # softmax: exp(-inf) is exactly 0
                gate.task_logits[:old_tasks, routed] = float("-inf")
                gate.task_logits[old_tasks] = float("-inf")  # the new task: its own expert alone
                gate.task_logits[old_tasks, routed] = 0.0
    grown.changing_tasks = (task.name,)  # training changes its weights alone
    return grown


def with_task_removed(model: MTAModel, name: str) -> MTAModel:
    """A new model without task `name` (its head, gate row and, where the others' arithmetic
    allows, its expert: see the module's docstring); `model` itself is left as it was."""
    _check_surgery(model)
    if name not in model.task_index:
        raise TaskSurgeryError(f"the model has no task '{name}'; its tasks: {', '.join(model.task_index)}")
    if len(model.tasks) == 1:
        raise TaskSurgeryError(f"'{name}' is the model's only task: a model needs at least one")
    plan, removed = model.expert_plan, model.task_id(name)
    expert = int(plan.assignment[removed])
    tasks = [task for task in model.tasks if task.name != name]
    task_map = [i for i in range(len(model.tasks)) if i != removed]
    assignment = _assignment(model)
    del assignment[name]
    groups = list(model.config.mta.expert_groups or [plan.routed])
    group = _group_of(groups, expert)
    if expert in assignment.values():  # another task trains it too: it stays
        return _rebuilt(model, tasks, assignment, plan.routed, model.config.mta.expert_groups, task_map,
                        list(range(plan.total)))
    drawing = _tasks_drawing_on(model, expert, exclude=removed)
    if drawing:
        raise TaskSurgeryError(f"the gates of {', '.join(drawing)} draw on the expert of '{name}': removing it would "
                               "change their answers; keep the task, or retrain those tasks without it")
    if groups[group] > 1 and not _gates_fixed(model):  # its group keeps its shape: the expert stays, zeroed
        reduced = _rebuilt(model, tasks, assignment, plan.routed, model.config.mta.expert_groups, task_map,
                           list(range(plan.total)))
        _zero_expert(reduced, expert)
        return reduced
    experts = [i for i in range(plan.total) if i != expert]  # new -> old
    assignment = {task: old - (old > expert) for task, old in assignment.items()}
    groups[group] -= 1
    groups = [size for size in groups if size]
    return _rebuilt(model, tasks, assignment, plan.routed - 1, groups if len(groups) > 1 else None, task_map,
                    experts)


def _check_surgery(model: MTAModel) -> None:
    if not isinstance(model, MTAModel) or not model.mta_layers:
        raise TaskSurgeryError("only a model with MTA experts can change its tasks without touching the others "
                               "(a shared LoRA or a Bi-LSTM would have to be retrained on every task)")
    if model.config.mta.kind == "ffn_copy":
        raise TaskSurgeryError("mta.kind=ffn_copy computes all its experts in one vmap: changing them would change "
                               "every task's arithmetic; use bottleneck or LoRA experts")
    if model.config.mta.fusion:
        raise TaskSurgeryError("mta.fusion: each task's attention spreads over every expert, so adding or removing one "
                               "would change every task's answers; train the model again with all its tasks")
    if model.backbone_trained:
        raise TaskSurgeryError("this model's backbone was trained: every task depends on it, so one task cannot "
                               "change without changing the others")


def _assignment(model: MTAModel) -> dict[str, int]:
    return {task.name: int(expert) for task, expert in zip(model.tasks, model.expert_plan.assignment.tolist())}


def _group_of(groups: list[int], expert: int) -> int:
    """The index of the group of routed experts that holds `expert`."""
    end = 0
    for index, size in enumerate(groups):
        end += size
        if expert < end:
            return index
    raise ValueError(f"expert {expert} is in no group of {groups}")


def _gates_fixed(model: MTAModel) -> bool:
    return all(bool(layer.gate.fixed) for layer in model.mta_layers)


@torch.no_grad()
def _tasks_drawing_on(model: MTAModel, expert: int, exclude: int) -> list[str]:
    """The tasks (other than `exclude`) whose gates may weigh `expert` non-zero."""
    if _gates_fixed(model):
        return []
    drawing = set()
    for gate in (layer.gate for layer in model.mta_layers):
        if gate.router is not None and gate.router.weight[expert].abs().sum() > 0:
            return [task.name for i, task in enumerate(model.tasks) if i != exclude]  # every row, by its input
        for task_id, task in enumerate(model.tasks):
            if task_id == exclude or int(gate.assignment[task_id]) == expert:
                continue
            logit = gate.task_logits[task_id, expert] if gate.task_logits is not None else None
            # A residual weight is its logit; a softmax weighs every expert whose logit is not -inf.
            if logit is None or (logit != 0 if bool(gate.residual) else logit != float("-inf")):
                drawing.add(task.name)
    return sorted(drawing)


@torch.no_grad()
def _zero_expert(model: MTAModel, expert: int) -> None:
    for module in model.modules():
        if isinstance(module, ExpertModule):
            for param in module.expert_parameters():
                param[expert] = 0.0


def _rebuilt(model: MTAModel, tasks: Sequence[Task], assignment: dict[str, int], routed: int,
             groups: list[int] | None, task_map: list[int | None], expert_map: list[int | None]) -> MTAModel:
    """`model` rebuilt for `tasks` with `routed` routed experts; each trained tensor copied
    from the old one through `task_map` (new task index -> old, None: new) and `expert_map`
    (new expert index, the shared one included -> old, None: new). Whatever maps to None
    keeps the new model's fresh start; a gate's new task-expert pairs start at 0."""
    mta = model.config.mta.model_copy(update={"num_experts": routed, "assignment": assignment,
                                              "expert_groups": groups})
    rebuilt = MTAModel(model.config.model_copy(update={"mta": mta}), tasks)
    rebuilt.set_inference(quantize_setting(model.backbone))  # generating as the given model does
    rebuilt.label_offsets = {name: offsets for name, offsets in model.label_offsets.items()
                             if name in rebuilt.task_index}
    old_state, new_state = model.state_dict(), rebuilt.state_dict()
    old_experts = [i for i in expert_map if i is not None]
    kept_experts = [i for i, old in enumerate(expert_map) if old is not None]
    old_tasks = [i for i in task_map if i is not None]
    kept_tasks = [i for i, old in enumerate(task_map) if old is not None]
    stacked = {id(param) for module in model.modules() if isinstance(module, ExpertModule)
               for param in module.expert_parameters()}
    stacked_names = {name for name, param in model.named_parameters() if id(param) in stacked}
    with torch.no_grad():
        for name in rebuilt.trained_state():
            if name not in old_state or name.endswith("assignment"):  # a new head; the plan's own assignment
                continue
            old, new = old_state[name], new_state[name]
            if name in stacked_names:  # a stacked expert weight (experts, ...)
                new[kept_experts] = old[old_experts]
            elif name.endswith("task_logits"):  # (tasks, K): routed experts only
                routed_old = [i for i in old_experts if i < old.shape[1]]
                routed_new = [i for i in kept_experts if i < new.shape[1]]
                new.zero_()
                new[kept_tasks] = new[kept_tasks].index_copy(1, torch.tensor(routed_new),
                                                             old[old_tasks][:, routed_old])
            elif name.endswith("shared_logits"):  # (tasks,)
                new.zero_()
                new[kept_tasks] = old[old_tasks]
            elif name.endswith("router.weight"):  # (K, d): routed experts only
                new.zero_()
                new[[i for i in kept_experts if i < new.shape[0]]] = old[[i for i in old_experts if i < old.shape[0]]]
            else:  # a head of a task that stays (by its name), a shared adapter, a gate's flags
                new.copy_(old)
    return rebuilt.train(model.training)
