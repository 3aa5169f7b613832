"""`alter experiment`: every system of the config, over every seed, each written once.

A system's scores land in `<output_dir>/seed<S>/<system>/result.json`; a system that has
one is not run again, and an interrupted one resumes from its last checkpoint (its training
runs resume by themselves), so a long experiment can run in pieces.
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from alter.config import Config, ConfigError
from alter.evaluate.evaluator import macro_average
from alter.evaluate.predictions import compute_task_metrics, task_record, write_predictions
from alter.evaluate.report_data import Report
from alter.evaluate.trivial import lead
from alter.experiment.config import ExperimentConfig, SystemConfig
from alter.experiment.results import write_results
from alter.models.bilstm import BiLSTMModel
from alter.models.mta_model import MTAModel
from alter.training.continuation import STOP_RECORD, continue_stopped_stage
from alter.training.datasets import load_split, load_tasks, task_rates
from alter.training.early_stopping import stage_finished
from alter.training.resume import differences, resume_conflict
from alter.training.run import run_training

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"


def run_experiment(config: ExperimentConfig, only: list[str] | None = None,
                   seeds: list[int] | None = None) -> dict[str, Any]:
    """Run what is not run yet (of the systems in `only` and the seeds in `seeds`, where given)
    and write the results of everything run so far."""
    out = Path(config.output_dir)
    unknown = [name for name in only or [] if name not in config.systems]
    if unknown:
        raise ValueError(f"--only: no system {', '.join(unknown)} in this experiment "
                         f"(its systems: {', '.join(config.systems)})")
    if unknown_seeds := [seed for seed in seeds or [] if seed not in config.seeds]:
        raise ValueError(f"--seeds: {unknown_seeds} not among the experiment's seeds {config.seeds}")
    # A system read from another one's run, or started from its checkpoint, comes after it.
    order = sorted(config.systems, key=lambda name: (config.systems[name].kind == "after_stage",
                                                     config.systems[name].starts_from is not None))
    for seed in seeds or config.seeds:
        for name in order:
            if (only and name not in only) or seed not in config.system_seeds(name):
                continue
            target = out / f"seed{seed}" / name / RESULT_FILE
            if target.exists():
                _check_unchanged(config, name, seed, target.parent)
                log.info("seed %d, %s: done before, kept", seed, name)
                continue
            if config.systems[name].kind == "external":
                log.warning("seed %d, %s: not run yet; its own program writes it: %s", seed, name,
                            config.systems[name].written_by)
                continue
            log.info("seed %d, %s: running", seed, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            result = run_system(config, name, seed, target.parent)
            target.write_text(json.dumps(result, indent=2))
    return write_results(config, out)


def _check_unchanged(config: ExperimentConfig, name: str, seed: int, run_dir: Path) -> None:
    """A finished system is kept only if the config still describes the run that made it;
    otherwise its old scores would be mixed with new ones under one name."""
    system = config.systems[name]
    if system.kind != "train" or system.per_task:
        return
    conflict = resume_conflict(run_dir, config.train_config(name, seed, run_dir))
    if conflict:
        raise ConfigError(f"seed {seed}, system {name}: {conflict}")


def run_system(config: ExperimentConfig, name: str, seed: int, out: Path) -> dict[str, Any]:
    """{"tasks": {task: {metric: 0-1}}, "macro", "train_seconds", "trainable_params", ...}."""
    system = config.systems[name]
    if system.kind == "lead":
        return _run_lead(config.train_config(name, seed, out), system, out)
    if system.kind == "after_stage":
        return _after_stage(out.parent / system.of, system)
    build = partial(BiLSTMModel, lstm=system.bilstm) if system.architecture == "bilstm" else MTAModel
    if not system.per_task:
        shared = copy_shared_stages(config, name, seed, out) if system.starts_from is not None else []
        summary = _own_cost(_summary(Report.model_validate(run_training(config.train_config(name, seed, out), build))),
                            shared)
        if system.starts_from is not None and system.starts_from.continue_stopped:
            summary["continues"] = f"{system.starts_from.system}: {system.starts_from.stage}"
        return summary
    base = config.train_config(name, seed, out)
    names = base.data.scored_tasks()  # an auxiliary task alone would never be scored
    rates = _mixture_rates(base)
    reports = {}
    for task in names:
        finished = out / task / "report.json"
        if finished.exists():  # this task's model was trained and scored by an earlier piece of the run
            reports[task] = Report.read(finished)
            continue
        task_config = config.train_config(name, seed, out / task, tasks=[task])
        if system.per_task_steps == "share":
            stages = [stage.model_copy(update={"steps": max(1, round(stage.steps * rates[task]))})
                      for stage in task_config.stages]
            task_config = task_config.model_copy(update={"stages": stages})
        reports[task] = Report.model_validate(run_training(task_config, build))
    return _combine(reports)


def copy_shared_stages(config: ExperimentConfig, name: str, seed: int, out: Path) -> list[str]:
    """Put the checkpoints of the stages that `name` shares with its `starts_from` system (up
    to and including the named stage) into `out`, with their log lines; training then resumes
    after them. Refused unless both systems' configs agree on everything those stages used
    (but the named stage's early stopping, where it is continued: `continue_stopped`).
    Returns the labels of the stages taken whole (a continued stage is this system's own)."""
    source = config.systems[name].starts_from
    source_dir = out.parent / source.system
    mine, theirs = config.train_config(name, seed, out), config.train_config(source.system, seed, source_dir)
    labels = [stage.label for stage in theirs.stages]
    if source.stage not in labels:
        raise ConfigError(f"systems.{name}.starts_from.stage: '{source.stage}' is not a stage of "
                          f"'{source.system}' ({', '.join(labels)})")
    named = labels.index(source.stage)
    shared = labels[: named + 1]
    old, new = theirs.model_dump(mode="json"), mine.model_dump(mode="json")
    if source.continue_stopped and named < len(new["stages"]):
        # A stopping rule shapes no step before its stop: the continued stage may stop by another.
        old["stages"][named]["early_stopping"] = new["stages"][named]["early_stopping"]
    if all(stage.kind == "stage1" for stage in theirs.stages[: len(shared)]):
        # Fixed stage-1 gates read neither an attention fusion (`mta.fusion`, zero until a
        # collaboration trains it) nor an input router (`mta.gate`'s `input`, likewise): a
        # system with either may start from the stage 1 of one without.
        for setting in ("fusion", "gate"):
            old["model"]["mta"][setting] = new["model"]["mta"][setting]
    changes = [change for key in ("seed", "model", "data") for change in differences(old[key], new[key], key)]
    changes += [change for index in range(len(shared)) for change in
                differences(old["stages"][index], new["stages"][index] if index < len(new["stages"]) else None,
                            f"stages.{index}")]
    if changes:
        raise ConfigError(f"systems.{name}.starts_from: its config differs from '{source.system}' in what the "
                          f"shared stages used: {'; '.join(changes[:4])}")
    checkpoint = source_dir / "stages" / source.stage / "last"
    state = checkpoint / "state.json"
    steps = theirs.stages[named].steps
    if not state.exists():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint of '{source.system}' (a run folder without its "
                                "stages, or not run yet); run it first")
    if not stage_finished(json.loads(state.read_text()), steps):
        raise FileNotFoundError(f"{checkpoint}: '{source.system}' has not finished {source.stage}; run it first")
    for label in shared:  # the whole stage folder: its last checkpoint and its best weights
        target = out / "stages" / label
        if not (target / "last").exists():
            shutil.copytree(source_dir / "stages" / label, target, dirs_exist_ok=True)
    records = ([json.loads(line) for line in (source_dir / "log.jsonl").read_text().splitlines()]
               if (source_dir / "log.jsonl").exists() else [])
    # A continued stage's stop is not this system's: its log goes on after the last check.
    records = [record for record in records if record.get("stage") in shared
               and not (source.continue_stopped and record.get("stage") == source.stage and STOP_RECORD in record)]
    if source.continue_stopped:
        at_step = continue_stopped_stage(source_dir / "stages" / source.stage, out / "stages" / source.stage,
                                         [record for record in records if record["stage"] == source.stage],
                                         theirs.stages[named].early_stopping, mine, named)
        log.info("seed %d, %s: continues %s's stage %s from step %d", seed, name, source.system, source.stage, at_step)
    log_path = out / "log.jsonl"
    if not log_path.exists():
        log_path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return shared[:-1] if source.continue_stopped else shared


def _own_cost(summary: dict[str, Any], shared: list[str]) -> dict[str, Any]:
    """A system started from another one's stages counts only the training it did itself."""
    if shared:
        summary["train_seconds"] = round(sum(stage["wall_seconds"] for label, stage in summary["stages"].items()
                                             if label not in shared), 2)
        summary["shared_stages"] = shared
    return summary


def _mixture_rates(config: Config) -> dict[str, float]:
    """The share of each task in the multi-task mixture of this config."""
    tasks = load_tasks(config)
    sizes = {name: len(examples) for name, examples in load_split(config, tasks, config.data.train_split, True).items()}
    return task_rates(config, sizes)


def _summary(report: Report) -> dict[str, Any]:
    stages = report.stages.values()
    return {
        "tasks": report.metrics,
        "macro": report.macro,
        "train_seconds": round(sum(stage.wall_seconds for stage in stages), 2),
        "eval_seconds": round(sum(report.eval_seconds.values()), 2),
        "trainable_params": sum(stage.trainable_params for stage in stages),
        "stages": {label: stage.model_dump() for label, stage in report.stages.items()},
        "eval_examples": report.eval_examples,
        "predictions": "predictions_final.json",
        **({"validation_macro": report.validation.macro} if report.validation else {}),
        "log": "log.jsonl",
        **({"gates": "gates.png"} if "gates" in report.plots else {}),
    }


def _combine(reports: dict[str, Report]) -> dict[str, Any]:
    """One model per task: their scores side by side, their costs added up."""
    parts = {task: _summary(report) for task, report in reports.items()}
    tasks = {task: part["tasks"][task] for task, part in parts.items()}
    main = {task: reports[task].main_metrics[task] for task in reports}
    return {
        "tasks": tasks,
        "macro": 100.0 * sum(tasks[t][main[t]] for t in tasks) / len(tasks),
        "train_seconds": round(sum(part["train_seconds"] for part in parts.values()), 2),
        "eval_seconds": round(sum(part["eval_seconds"] for part in parts.values()), 2),
        "trainable_params": sum(part["trainable_params"] for part in parts.values()),
        "predictions": {task: f"{task}/predictions_final.json" for task in reports},
        "per_task": {task: {k: part[k] for k in ("train_seconds", "trainable_params", "stages")}
                     for task, part in parts.items()},
        **({"validation_macro": sum(part["validation_macro"] for part in parts.values()) / len(parts)}
           if all("validation_macro" in part for part in parts.values()) else {}),
        "eval_examples": {task: reports[task].eval_examples[task] for task in reports},
        "log": {task: f"{task}/log.jsonl" for task in reports},
    }


def _after_stage(run_dir: Path, system: SystemConfig) -> dict[str, Any]:
    report_path = run_dir / "report.json"
    if not report_path.exists():
        raise FileNotFoundError(f"{report_path}: system '{system.of}' has not finished; run it first")
    report = Report.read(report_path)
    scores = (report.after_stage or {}).get(system.stage)
    if scores is None:
        raise ValueError(f"{report_path} holds no scores after stage '{system.stage}' "
                         f"(stages with scores: {', '.join(report.after_stage or {}) or 'none'})")
    stage = report.stages[system.stage]
    return {"tasks": scores.metrics, "macro": scores.macro, "train_seconds": stage.wall_seconds,
            "eval_seconds": report.eval_seconds.get(f"after_{system.stage}", 0.0),
            "trainable_params": stage.trainable_params, "stages": {system.stage: stage.model_dump()},
            "eval_examples": report.eval_examples, "log": f"../{system.of}/log.jsonl",
            "predictions": f"../{system.of}/predictions_after_{system.stage}.json",
            **({"validation_macro": scores.validation_macro} if scores.validation_macro is not None else {}),
            "from": f"{system.of} after {system.stage}"}


def _run_lead(config: Config, system: SystemConfig, out: Path) -> dict[str, Any]:
    tasks = [task for task in load_tasks(config) if task.kind == "generation"]
    if not tasks:
        raise ValueError("the lead system needs a generation task among the base tasks")
    eval_sets = load_split(config, tasks, config.data.eval_split, training=False)
    scores, records = {}, {}
    for task in tasks:
        examples = eval_sets[task.name]
        field = next(iter(task.spec.inputs))  # the source text
        summaries = [lead(example.inputs[field], system.sentences) for example in examples]
        scores[task.name] = compute_task_metrics(task, summaries, examples)
        records[task.name] = task_record(task, summaries, examples)
    write_predictions(out / "predictions_final.json", records)
    return {"tasks": scores, "macro": macro_average(tasks, scores), "train_seconds": 0.0, "eval_seconds": 0.0,
            "trainable_params": 0, "predictions": "predictions_final.json",
            "eval_examples": {name: len(examples) for name, examples in eval_sets.items()}}
