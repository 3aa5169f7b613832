"""`alter train`: config -> data -> model -> stages -> evaluation -> report and saved model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from alter.config import Config, ConfigError, ModelConfig
from alter.data.task import Task
from alter.evaluate.ranks import Ranks
from alter.evaluate.report import build_report, write_report
from alter.evaluate.trivial import trivial_scores
from alter.models.contract import TrainableModel
from alter.models.mta_model import MTAModel
from alter.training.datasets import (
    StageData,
    TrainingSets,
    inputs_cut,
    load_split,
    load_tasks,
    load_training,
    stage_data,
    with_mixture,
)
from alter.training.distributed import pick_device, place, start
from alter.training.loop import StageResult, train_stage
from alter.training.resume import resume_conflict
from alter.training.run_log import TENSORBOARD_DIR, RunLog, TensorBoardEvents
from alter.training.scoring import Scorer
from alter.training.source_length import fit_source_length

log = logging.getLogger(__name__)


def run_training(config: Config,
                 build: Callable[[ModelConfig, list[Task]], TrainableModel] = MTAModel) -> dict[str, Any]:
    """Train every configured stage (resuming where a previous run stopped) and report.

    `build` makes the model from the model config and tasks (a baseline passes its own).
    Under a launcher with several processes every rank runs this; the main one writes."""
    device = pick_device(config.device)
    ranks = start(config.distributed, device)
    out = Path(config.output_dir)
    conflict = ranks.from_main(resume_conflict(out, config) if ranks.is_main else None)
    if conflict:
        raise ConfigError(conflict)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    torch.manual_seed(config.seed)
    tasks = load_tasks(config)
    training = load_training(config, tasks)
    train_sets, validation = training.train, training.validation
    eval_sets = load_split(config, tasks, config.data.eval_split, training=False)
    model = build(config.model, tasks)
    fit_source_length(model, tasks, train_sets)
    # FSDP hands each block its weights for the length of a forward: no int8 copy would last.
    model.set_inference("none" if config.distributed.strategy == "fsdp" and ranks.world_size > 1
                        else config.inference.quantize)
    model = place(model, device, ranks, config.distributed.strategy)
    _check_settings(config, model, bool(validation))
    run_log = _run_log(config, out, ranks.is_main)
    # What `Scorer.unlearned` and early stopping (`until_learned`) compare the validation scores with.
    floors_needed = any(stage.rebalance or (stage.early_stopping and stage.early_stopping.until_learned)
                        for stage in config.stages)
    scorer = Scorer(model, tasks, out, eval_sets, validation, config.eval, ranks, run_log,
                   trivial_scores(tasks, train_sets, validation) if floors_needed and validation else None)
    before = scorer("before", "the untrained model")["metrics"] if config.eval.before_training else None
    train_data = stage_data(model, config, training.train)
    scored_rows = {name: model.encode(examples, with_target=False) for name, examples in eval_sets.items()}
    cut = inputs_cut({"train": dict(zip(train_data.task_names, train_data.rows)), "eval": scored_rows})
    stages, after_stage = _train_stages(config, model, training, train_data, scorer, run_log, ranks, out)
    if config.eval.calibrate:
        offsets = scorer.fit_label_offsets()
        run_log.write({"label_offsets": offsets})
        log.info("decision offsets fitted on the validation examples: %s", offsets or "none needed")
    saved = {"stages": [vars(result) for result in stages]}
    last = config.stages[-1].label
    final = scorer("final", "the trained model", keep=False, stage=last)
    report = build_report(model, final, before, stages, {name: len(v) for name, v in eval_sets.items()},
                          after_stage, scorer.seconds, trivial_scores(tasks, train_sets, eval_sets),
                          {task.name: task.skipped_rows for task in tasks if task.skipped_rows}, cut)
    if ranks.is_main:
        report = _finish(model, out, report, run_log, last, saved)
    return report


def _check_settings(config: Config, model: TrainableModel, has_validation: bool) -> None:
    """Settings that this model or these data cannot honour, refused before any training."""
    for stage in config.stages:
        if stage.prune_to and not model.capabilities.gates:
            raise ConfigError(f"stage {stage.label}: prune_to prunes MTA gates; this {type(model).__name__} has none")
        if stage.rebalance and not has_validation:
            raise ConfigError(f"stage {stage.label}: rebalance scores the validation examples; set data.validation")
    if config.eval.calibrate and not has_validation:
        raise ConfigError("eval.calibrate fits decision offsets on the validation examples: set data.validation")
    if config.eval.calibrate and not model.capabilities.label_offsets:
        raise ConfigError(f"eval.calibrate: a {type(model).__name__} has no decision offsets")


def _train_stages(config: Config, model: TrainableModel, training: TrainingSets, train_data: StageData,
                  scorer: Scorer, run_log: RunLog, ranks: Ranks, out: Path) -> tuple[list[StageResult], dict[str, Any]]:
    """Every stage in turn (each resumes where it stopped); the stages' results and the scores
    taken between them (`eval.after_each_stage`, before pruning). `train_data`: the training
    sets encoded."""
    data = {"train": train_data}
    stages, after_stage = [], {}
    for index, stage in enumerate(config.stages):
        if stage.train_on not in data:
            data[stage.train_on] = stage_data(model, config, training.held_out, held_out=True)
        stage_rows = data[stage.train_on] if stage.mixture is None else with_mixture(config, data[stage.train_on],
                                                                                      stage.mixture)
        result = train_stage(model, stage, stage_rows, out / "stages" / stage.label,
                             run_log, seed=config.seed + index, validation_scores=scorer.selection_scores, ranks=ranks,
                             unlearned=scorer.unlearned if stage.rebalance else None,
                             floors=scorer.validation_floors())
        stages.append(result)
        if stage.prune_to:
            after_stage[f"{stage.label}_unpruned"] = scorer(f"after_{stage.label}_unpruned",
                                                           f"the model after {stage.label}, before pruning",
                                                           stage=stage.label)
            model.prune_gates(stage.prune_to)
        if config.eval.after_each_stage and index < len(config.stages) - 1:
            after_stage[stage.label] = scorer(f"after_{stage.label}", f"the model after {stage.label}",
                                             stage=stage.label)
    return stages, after_stage


def _run_log(config: Config, out: Path, is_main: bool) -> RunLog:
    events = None
    if config.logging.tensorboard and is_main:
        events = TensorBoardEvents(out / TENSORBOARD_DIR, {stage.label: stage.steps for stage in config.stages})
    return RunLog(out / "log.jsonl", enabled=is_main, events=events)


def _finish(model: TrainableModel, out: Path, report: dict[str, Any], run_log: RunLog, last_stage: str,
            saved: dict[str, Any]) -> dict[str, Any]:
    """The main process's last words: warnings, report and plots, gates to TensorBoard, and the
    model saved once its run's report is written (its model card shows the run's scores; an
    interruption before this loses no training: the finished stages' checkpoints are kept)."""
    for line in report["shortfalls"]:
        log.warning("%s", line)
    report = write_report(out, model, report)
    run_log.gates(model.task_gate_weights(), [task.name for task in model.tasks], last_stage)
    run_log.close()
    model.trained_in = out.resolve()
    model.save(out / "model", saved)
    return report
