"""Early stopping: a stage ends when its validation score stops improving, with its best weights.

For the whole model, the best evaluation's checkpoint (`stage_dir/best`, which the loop writes
whenever the validation macro improves by more than `min_delta`) is loaded when the stage ends;
the loop alone decides what counts as a gain, and tells `observe`. Per task, each task
stops on its own: its rows leave the mixture once it has not improved for `patience`
evaluations, and when the stage ends its own weights (`TrainableModel.task_parameters`: its
expert's rows, its gate row, its head) are put back to those of its best evaluation. That is
only sound when no trained weight serves two tasks, which `check_isolated` makes sure of.
With `until_learned`, a check at which a task is not yet above its trivial score counts no
patience: for that task alone (per task), or for the whole model (until every task is above its
own), so that neither way of stopping ends a task's training before it has started to learn.
On task clocks (`StageConfig.task_steps`), a task's patience counts its own batches (an
evaluation's worth each `eval_every` of them) instead of the stage's evaluations, and a task
whose clock runs out stops (`stop`).

Everything the stopper knows is in the stage's checkpoint (`state`) and in
`stage_dir/best_per_task.safetensors`, so an interrupted stage resumes, and a stopped one
stays stopped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alter.config import EarlyStoppingConfig
from alter.evaluate.trivial import beats_trivial
from alter.models.contract import TrainableModel

BEST_FOLDER = "best"
BEST_PER_TASK_FILE = "best_per_task.safetensors"

Owned = dict[str, int | None]  # parameter name -> the task's row of it (None: all of it)


def check_isolated(owned: dict[str, Owned], trainable: dict[str, nn.Parameter]) -> None:
    """Every trained weight belongs to one task: a whole tensor to one task, or each row of a
    stacked tensor to one task. Raises ValueError naming the first weight that does not."""
    claims: dict[str, dict[int | None, list[str]]] = {}
    for task, rows in owned.items():
        for name, row in rows.items():
            claims.setdefault(name, {}).setdefault(row, []).append(task)
    for name, param in trainable.items():
        rows = claims.get(name)
        shared = None
        if rows is None:
            shared = "is trained for every task (a shared adapter, router or backbone weight)"
        elif any(len(tasks) > 1 for tasks in rows.values()) or (None in rows and len(rows) > 1):
            shared = f"serves several tasks ({', '.join(sorted({t for ts in rows.values() for t in ts}))})"
        elif None not in rows and len(rows) < param.shape[0]:
            shared = f"has {param.shape[0] - len(rows)} row(s) no single task owns (a shared expert)"
        if shared:
            raise ValueError(f"early_stopping.per_task keeps each task's best weights apart, but {name} {shared}; "
                             "train without a shared expert or shared LoRA, one expert per task, or stop the "
                             "whole stage at once (per_task: false)")


def at_trivial(config: EarlyStoppingConfig, floors: dict[str, float], task: str, score: float) -> bool:
    """`until_learned`: the task has a known trivial score (`floors`, 0-1) and is not yet above it."""
    return config.until_learned and task in floors and not beats_trivial(score, floors[task])


def gains(macro: float, best: float, config: EarlyStoppingConfig | None) -> bool:
    """Whether a validation macro (0-100) improves on the best so far: by more than
    `min_delta` (a smaller gain is none)."""
    return macro > best + (config.min_delta if config else 0.0)


def waited_after(config: EarlyStoppingConfig, floors: dict[str, float], waited: int, scores: dict[str, float],
                 improved: bool) -> int:
    """The whole model's evaluations without a gain after one more (`scores`: each task's main
    score, 0-1). With `until_learned`, a check at which some task is still at its trivial score
    counts no patience (the stage trains on, to its steps at most)."""
    if improved:
        return 0
    if any(at_trivial(config, floors, task, score) for task, score in scores.items()):
        return waited
    return waited + 1


def replay_whole_model(config: EarlyStoppingConfig, floors: dict[str, float],
                       checks: Sequence[tuple[float, dict[str, float]]]) -> tuple[int, int | None]:
    """Whole-model stopping replayed over a stage's validation checks, in order from its start
    (each the macro, 0-100, and the task scores, 0-1, as the run log holds them): the
    evaluations waited after the last one, and the index of the check that ended the stage
    (None: none did)."""
    best, waited = -math.inf, 0
    for index, (macro, scores) in enumerate(checks):
        improved = gains(macro, best, config)
        best = macro if improved else best
        waited = waited_after(config, floors, waited, scores, improved)
        if waited >= config.patience:
            return waited, index
    return waited, None


class EarlyStopper:
    def __init__(self, model: TrainableModel, config: EarlyStoppingConfig, trainable: dict[str, nn.Parameter],
                 stage_dir: Path, floors: dict[str, float] | None = None):
        """`floors`: each task's trivial main score (0-1) on the examples `observe` is given,
        for `config.until_learned`."""
        self.model, self.config, self.stage_dir = model, config, stage_dir
        self.floors = floors or {}
        self.waited = 0  # the whole model: evaluations since its last gain
        self.best: dict[str, float] = {}  # per task: best main score (0-100) and evaluations since
        self.task_waited: dict[str, float] = {}  # evaluations' worth of the task's training
        self.clock_seen: dict[str, float] = {}  # per task: its clock at its last evaluation
        self.stopped: list[str] = []
        self.scored: list[str] = []  # the tasks the last evaluation scored
        self.finished = False
        self.owned: dict[str, Owned] = {}
        if config.per_task:
            self.owned = {task.name: model.task_parameters(model.task_id(task.name)) for task in model.tasks}
            check_isolated(self.owned, trainable)

    def observe(self, scores: dict[str, float], model_improved: bool, clock: dict[str, float] | None = None) -> bool:
        """Take one evaluation's validation scores ({task: main score, 0-1}) and whether the
        whole model's macro gained on its best (the loop's judgement, which also keeps its
        checkpoint); whether a task stopped at it (the mixture then changes). Sets `finished`
        when the stage should end. `clock`: per task, the evaluations' worth of its own batches
        trained so far (task clocks); without it every evaluation counts one for every task."""
        if not self.config.per_task:
            self.waited = waited_after(self.config, self.floors, self.waited, scores, model_improved)
            self.finished = self.waited >= self.config.patience
            return False
        newly = False
        for task, score in scores.items():
            if task in self.stopped:
                continue
            elapsed = 1.0
            if clock is not None:
                elapsed = clock[task] - self.clock_seen.get(task, 0.0)
                self.clock_seen[task] = clock[task]
            if gains(100.0 * score, self.best.get(task, -math.inf), self.config):
                self.best[task], self.task_waited[task] = 100.0 * score, 0
                self._snapshot(task)
            elif at_trivial(self.config, self.floors, task, score):
                continue  # not learned yet: no patience counts down
            else:
                self.task_waited[task] = self.task_waited.get(task, 0) + elapsed
                if self.task_waited[task] >= self.config.patience:
                    self.stopped.append(task)
                    newly = True
        self.scored = list(scores)
        self.finished = all(task in self.stopped for task in scores)
        return newly

    def stop(self, task: str) -> None:
        """Stop a task whatever its patience (its clock ran out); it keeps its best weights."""
        if task not in self.stopped:
            self.stopped.append(task)
        self.finished = bool(self.scored) and all(name in self.stopped for name in self.scored)

    def rates(self, task_names: Sequence[str], rates: Sequence[float]) -> list[float]:
        """`rates` without the stopped tasks, renormalised (unchanged if nothing would be left)."""
        kept = [0.0 if name in self.stopped else rate for name, rate in zip(task_names, rates)]
        total = sum(kept)
        return [rate / total for rate in kept] if total > 0 else list(rates)

    # --- the best weights -------------------------------------------------------------------
    def _snapshot(self, task: str) -> None:
        """Write the task's own weights as they are now into the per-task best file."""
        path = self.stage_dir / BEST_PER_TASK_FILE
        kept = load_file(str(path)) if path.exists() else {}
        params = dict(self.model.named_parameters())
        for name, row in self.owned[task].items():
            value = params[name].detach()
            kept[f"{task}/{name}"] = (value if row is None else value[row]).cpu().clone()
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(kept, str(tmp))
        os.replace(tmp, path)  # a run killed while writing keeps the previous file

    @torch.no_grad()
    def restore(self) -> None:
        """Put the best weights back: the whole model's best checkpoint, or each task's own."""
        if not self.config.per_task:
            if (self.stage_dir / BEST_FOLDER).exists():
                self.model.load_trained(self.stage_dir / BEST_FOLDER)
            return
        path = self.stage_dir / BEST_PER_TASK_FILE
        if not path.exists():
            return
        params = dict(self.model.named_parameters())
        for key, value in load_file(str(path)).items():
            task, name = key.split("/", 1)
            row = self.owned[task][name]
            target = params[name] if row is None else params[name][row]
            target.copy_(value.to(target.device, target.dtype))

    # --- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"early_stopping": {"waited": self.waited, "best": self.best, "task_waited": self.task_waited,
                                   "clock_seen": self.clock_seen, "scored": self.scored, "stopped": self.stopped,
                                   "finished": self.finished}}

    def load(self, meta: dict[str, Any]) -> None:
        saved = meta.get("early_stopping")
        if not saved:
            return
        self.waited, self.best, self.task_waited = saved["waited"], saved["best"], saved["task_waited"]
        self.stopped, self.finished = saved["stopped"], saved["finished"]
        # checkpoints written before task clocks hold neither
        self.clock_seen, self.scored = saved.get("clock_seen", {}), saved.get("scored", [])


def stage_finished(meta: dict[str, Any], steps: int) -> bool:
    """Whether a stage checkpoint's JSON part says the stage is over (its steps, or stopped)."""
    return meta["step"] >= steps or bool(meta.get("early_stopping", {}).get("finished"))
