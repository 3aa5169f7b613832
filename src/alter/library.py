"""`alter.train`: train a model built in Python through the same run as `alter train CONFIG`
(resumable checkpoints, evaluation, report, model card), without writing a config file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alter.config import Config, ConfigError, DataConfig, EvalConfig, LoggingConfig, StageConfig
from alter.data.builtin import BUILTIN_TASKS
from alter.data.spec import TaskSpec
from alter.evaluate.report_data import Report
from alter.models.mta_model import MTAModel
from alter.training.run import run_training


@dataclass
class TrainResult:
    model: MTAModel  # the trained model (the one passed in, trained in place)
    report: Report  # scores, each stage's cost, what was not learned
    output_dir: Path  # config.yaml, log.jsonl, report.md, plots, stage checkpoints and model/

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"


def train(model: MTAModel, stages: Sequence[StageConfig | dict], output_dir: str | Path, *,
          data: DataConfig | dict | None = None, eval: EvalConfig | dict | None = None,  # noqa: A002 - as in YAML
          logging: LoggingConfig | dict | None = None, seed: int = 0, device: str = "auto") -> TrainResult:
    """Train `model`'s stages on its tasks' training files and score it on their evaluation
    split; run it again with the same arguments to resume an interrupted run. `data`, `eval`
    and `logging` take the keys of a config's `data:`, `eval:` and `logging:` sections (caps,
    held-out examples, mixture; batch size, beams; `tensorboard`); `data.tasks` defaults to
    the model's tasks."""
    settings = data.model_dump() if isinstance(data, DataConfig) else dict(data or {})
    settings.setdefault("tasks", [task.name for task in model.tasks])
    settings["custom_tasks"] = [*settings.get("custom_tasks", []), *_user_specs(model)]
    config = Config.model_validate({
        "output_dir": str(output_dir), "seed": seed, "device": device, "model": model.config,
        "data": settings, "stages": list(stages), "eval": eval if eval is not None else EvalConfig(),
        "logging": logging if logging is not None else LoggingConfig()})
    report = run_training(config, build=lambda _config, _tasks: model)
    return TrainResult(model, Report.model_validate(report), Path(output_dir))


def _user_specs(model: MTAModel) -> list[Any]:
    """The specs of the model's tasks that are not built in (a config's `custom_tasks`)."""
    def data_of(spec: TaskSpec) -> TaskSpec:  # how it writes is the model's own choice
        return spec.model_copy(update={"generation": None})

    builtin = {spec.name: spec for spec in BUILTIN_TASKS}
    specs = []
    for task in model.tasks:
        if task.name not in builtin:
            specs.append(task.spec)
        elif data_of(builtin[task.name]) != data_of(task.spec):
            raise ConfigError(f"task {task.name}: a built-in task has this name; give your task another name")
    return specs
