"""An experiment: several systems trained and scored under one budget, over seeds.

Every system starts from the same `base` train config (tasks, caps, evaluation sets,
schedule) and changes only what makes it that system (`set:`, merged into the base).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alter.config import Config, ConfigError, describe_errors, parse_config, read_yaml
from alter.models.bilstm import BiLSTMConfig


class StageSource(BaseModel):
    """Another system's checkpoint after one of its stages, to start from."""

    model_config = ConfigDict(extra="forbid")
    system: str
    stage: str
    # The source's early stopping ended `stage`; train it on under this system's, which may
    # differ from the source's in `early_stopping` alone and must not have ended it sooner
    # (alter.training.continuation). Its steps then count as this system's own.
    continue_stopped: bool = False


class SystemConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # train: a training run of the merged config; after_stage: the scores of another system's
    # model after one of its stages (no training of its own); lead: first sentences as summary;
    # external: a peer run by its own program (`written_by`), which writes the system's
    # result.json and per-example predictions into the experiment's folders itself.
    kind: Literal["train", "after_stage", "lead", "external"] = "train"
    written_by: str | None = None  # external: the command that writes it
    set: dict[str, Any] = {}  # merged into the base config (mappings merge, lists replace)
    tasks: list[str] | None = None  # a subset of the base tasks (e.g. an encoder cannot summarise)
    architecture: Literal["transformer", "bilstm"] = "transformer"
    bilstm: BiLSTMConfig = BiLSTMConfig()
    # One model per task. "share": each sees as many of its task's examples as the mixture
    # gives that task in the multi-task run (its stages' steps scaled by the task's rate).
    per_task: bool = False
    per_task_steps: Literal["share", "full"] = "share"
    of: str | None = None  # after_stage: the system
    stage: str | None = None  # after_stage: the stage's name
    sentences: int = Field(default=2, ge=1)  # lead
    # Start from another system's checkpoint after a stage they share (same model, data,
    # seed and stages up to it), instead of training it again: variants of stage 2 share stage 1.
    starts_from: StageSource | None = None
    seeds: list[int] | None = None  # a subset of the experiment's seeds (default: all of them)

    @model_validator(mode="after")
    def _check_kind(self) -> SystemConfig:
        if self.kind == "after_stage" and not (self.of and self.stage):
            raise ValueError("kind after_stage needs `of` (a system) and `stage` (one of its stages)")
        if self.kind == "external" and not self.written_by:
            raise ValueError("kind external needs `written_by`, the command that writes its results")
        return self


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: str = "runs/experiment"
    seeds: list[int] = Field(default=[0], min_length=1)
    base: dict[str, Any]  # a train config without output_dir and seed
    systems: dict[str, SystemConfig] = Field(min_length=1)
    # The systems every other one is compared with, example by example and seed by seed
    # (`paired_vs_<name>`, `seeds_vs_<name>` in results.json); the first heads the tables and
    # its stage-1 scores give `stage2_gain`. Systems not in the experiment are skipped.
    references: list[str] = Field(default=["mta"], min_length=1)

    @model_validator(mode="after")
    def _check_references(self) -> ExperimentConfig:
        for name, system in self.systems.items():
            unknown = [seed for seed in system.seeds or [] if seed not in self.seeds]
            if unknown:
                raise ValueError(f"systems.{name}.seeds: {unknown} not among the experiment's seeds {self.seeds}")
            if system.starts_from is not None:
                source = self.systems.get(system.starts_from.system)
                if source is None or source.kind != "train" or source.per_task or system.per_task:
                    raise ValueError(f"systems.{name}.starts_from: '{system.starts_from.system}' is not a trained "
                                     "system of this experiment (one model for all tasks)")
                if source.starts_from is not None:
                    raise ValueError(f"systems.{name}.starts_from: '{system.starts_from.system}' starts from "
                                     "another system itself; name that one")
            if system.kind != "after_stage":
                continue
            source = self.systems.get(system.of or "")
            if source is None or source.kind != "train" or source.per_task:
                raise ValueError(f"systems.{name}.of: '{system.of}' is not a trained system of this experiment "
                                 "(one model for all tasks)")
        return self

    def system_seeds(self, name: str) -> list[int]:
        return self.systems[name].seeds or self.seeds

    def train_config(self, name: str, seed: int, output_dir: Path, tasks: list[str] | None = None) -> Config:
        """The merged train config of system `name` (on `tasks`, default its own), validated."""
        system = self.systems[name]
        tree = merge(copy.deepcopy(self.base), copy.deepcopy(system.set))
        tree["output_dir"], tree["seed"] = str(output_dir), seed
        wanted = tasks or system.tasks
        if wanted:
            refs = tree.get("data", {}).get("tasks", [])
            listed = [ref if isinstance(ref, str) else ref.get("name") for ref in refs]
            unknown = [task for task in wanted if task not in listed]
            if unknown:
                raise ConfigError(f"systems.{name}.tasks: {', '.join(unknown)} not among the base tasks")
            tree["data"]["tasks"] = [ref for ref, task in zip(refs, listed) if task in wanted]
        rates = tree.get("data", {}).get("mixture", {}).get("rates")
        if rates and wanted:
            tree["data"]["mixture"]["rates"] = {task: rate for task, rate in rates.items() if task in wanted}
        if name in {other.of for other in self.systems.values() if other.kind == "after_stage"}:
            tree.setdefault("eval", {})["after_each_stage"] = True
        return parse_config(tree, f"experiment systems.{name}")


def merge(base: dict, update: dict) -> dict:
    """Mappings merge key by key; anything else in `update` replaces what `base` holds."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(read_yaml(path, overrides, "experiment config"))
    except ValidationError as error:
        raise ConfigError(describe_errors(error, str(path), overrides)) from None
