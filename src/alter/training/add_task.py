"""`alter add-task`: train new tasks into a saved MTA model, every old task left as it was.

The config is a training config whose `data.tasks` are the tasks to add (with their data
settings) and whose `stages` train them; its `model:` section may be left out (the
checkpoint's is used), and whatever it does say must agree with the checkpoint. The run is
an ordinary training run (resumable, report, model card) of the grown model, scored on the
added tasks alone: the old tasks' answers are the same to the bit (`task_surgery`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alter.config import Config, ConfigError, ModelConfig, StageConfig
from alter.models.contract import TrainableModel
from alter.models.loading import load
from alter.models.task_surgery import TaskSurgeryError, with_task_added, with_task_removed
from alter.training.datasets import load_tasks
from alter.training.run import run_training

# What add-task may set differently from the checkpoint: the grown model's own bookkeeping.
GROWN_FIELDS = {"num_experts", "assignment", "expert_groups"}


def add_tasks(checkpoint: str | Path, config: Config, replace: Sequence[str] = ()) -> dict[str, Any]:
    """Train `config.data.tasks` into the model saved in `checkpoint`, after removing the
    tasks named in `replace` (each retrained from scratch under its name: it must be among
    the config's tasks); the grown model is saved in `config.output_dir/model`. Returns the
    run's report (the added tasks' scores)."""
    trains_backbone = [stage.label for stage in config.stages if stage.train_backbone]
    if trains_backbone:
        raise ConfigError(f"stage {trains_backbone[0]}: train_backbone would change every task's answers; an added "
                          "task trains its own expert, gate row and head")
    model = load(checkpoint, "none")  # run_training sets how it generates
    check_same_model(model.config, config.model, checkpoint)
    torch.manual_seed(config.seed)  # the added experts' start follows the config's seed, not what ran before
    tasks = load_tasks(config)
    missing = [name for name in replace if name not in {task.name for task in tasks}]
    if missing:
        raise ConfigError(f"--replace {', '.join(missing)}: a replaced task is trained again from the config's "
                          "data.tasks, which does not name it")
    try:
        for name in replace:
            model = with_task_removed(model, name)
        for task in tasks:
            model = with_task_added(model, task)
    except TaskSurgeryError as error:
        raise ConfigError(f"{checkpoint}: {error}") from None
    model.changing_tasks = tuple(task.name for task in tasks)
    config = config.model_copy(update={"stages": [_with_models_gates(stage, model) for stage in config.stages]})
    refusals = [refusal for stage in config.stages if (refusal := model.refuses_changing_tasks(stage))]
    if refusals:  # said now, not after the stages before it have trained
        raise ConfigError(f"{checkpoint}: {refusals[0]}")
    return run_training(config.model_copy(update={"model": model.config}), build=lambda _config, _tasks: model)


def _with_models_gates(stage: StageConfig, model: TrainableModel) -> StageConfig:
    """A collaborating stage that names no `collaboration` trains the added rows with the kind
    of gates the model has (the only kind it can: `TaskGate.refuses_rows`)."""
    collaboration = model.mta_layers[0].gate.collaboration if model.mta_layers else None
    if stage.kind == "stage1" or "collaboration" in stage.model_fields_set or collaboration is None:
        return stage
    return stage.model_copy(update={"collaboration": collaboration})


def check_same_model(saved: ModelConfig, asked: ModelConfig, checkpoint: str | Path) -> None:
    """The settings the config gives (those it names, not its defaults) must be the
    checkpoint's: a new task cannot change the backbone or the MTA layers of the others."""
    differences = [f"model.{name}: {getattr(asked, name)!r} here, {getattr(saved, name)!r} in the checkpoint"
                   for name in asked.model_fields_set - {"mta"} if getattr(asked, name) != getattr(saved, name)]
    if "mta" in asked.model_fields_set:
        differences += [f"model.mta.{name}: {getattr(asked.mta, name)!r} here, {getattr(saved.mta, name)!r} in the "
                        "checkpoint" for name in asked.mta.model_fields_set - GROWN_FIELDS
                        if getattr(asked.mta, name) != getattr(saved.mta, name)]
    if differences:
        raise ConfigError(f"{checkpoint}: a task is added with the model's own settings; leave model: out of the "
                          f"config or make it agree: {'; '.join(differences)}")


def remove_task(checkpoint: str | Path, name: str, output: str | Path) -> Path:
    """Save the model of `checkpoint` without task `name` in `output` (`with_task_removed`)."""
    try:
        reduced = with_task_removed(load(checkpoint, "none"), name)
    except TaskSurgeryError as error:
        raise ConfigError(f"{checkpoint}: {error}") from None
    reduced.save(output)
    return Path(output)
