"""`alter train`: config -> data -> model -> stages -> evaluation -> report and saved model."""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from alter.config import Config, ConfigError, MixtureConfig, ModelConfig, TaskRef
from alter.data.collate import Encoded
from alter.data.mixture import mixture_rates
from alter.data.registry import builtin_registry
from alter.data.task import Example, Task, data_root
from alter.distributed import pick_device, place, start
from alter.evaluate.evaluator import evaluate, evaluate_with_predictions, macro_average
from alter.evaluate.predictions import write_predictions
from alter.evaluate.report import build_report, write_report
from alter.evaluate.trivial import trivial_scores
from alter.model import MTAModel
from alter.train.loop import JsonlLog, StageData, train_stage
from alter.train.resume import resume_conflict

log = logging.getLogger(__name__)


def sample(examples: list[Example], cap: int | None, seed: int, task: str) -> list[Example]:
    """At most `cap` examples, the same ones for the same seed on every machine."""
    if cap is None or len(examples) <= cap:
        return examples
    rng = random.Random(seed * 1_000_003 + zlib.crc32(task.encode()))
    return [examples[i] for i in sorted(rng.sample(range(len(examples)), cap))]


def load_tasks(config: Config) -> list[Task]:
    registry = builtin_registry(config.data.custom_tasks)
    return [registry.get(ref.name) for ref in config.data.refs()]


def words(example: Example) -> int:
    return sum(len(text.split()) for text in example.inputs.values())


@dataclass
class TrainingSets:
    """Each task's examples of its training split, in three parts that share none."""

    train: dict[str, list[Example]]  # what training draws from, capped at `max_train`
    validation: dict[str, list[Example]]  # `data.validation`: for comparing settings, never trained on
    held_out: dict[str, list[Example]]  # `data.held_out`: only for stages with `train_on: held_out`


def load_training(config: Config, tasks: Sequence[Task], split: str | None = None) -> TrainingSets:
    """The training split (`split`, default `data.train_split`; a task's own `train_split` where
    it names one), each task's file read once and cut into its three parts."""
    refs = {ref.name: ref for ref in config.data.refs()}
    sets = TrainingSets({}, {}, {})
    for task in tasks:
        ref = refs[task.name]
        validation, held_out, rest = _training_pool(config, task, ref, split or config.data.train_split)
        sets.train[task.name] = sample(rest, ref.max_train, config.data.seed, task.name)
        if ref.validation:
            sets.validation[task.name] = validation
        if ref.scored and config.data.held_out:
            sets.held_out[task.name] = held_out
    return sets


def load_split(config: Config, tasks: Sequence[Task], split: str, training: bool) -> dict[str, list[Example]]:
    """Each task's examples of `split`, capped. Training: `load_training`'s training part;
    evaluation leaves out auxiliary (unscored) tasks."""
    if training:
        return load_training(config, tasks, split).train
    refs = {ref.name: ref for ref in config.data.refs()}
    return {task.name: sample(task.read(split, data_root(config.data.root)), refs[task.name].max_eval,
                              config.data.seed, task.name)
            for task in tasks if refs[task.name].scored}  # an auxiliary task is trained on, never scored


def _training_pool(config: Config, task: Task, ref: TaskRef,
                   split: str) -> tuple[list[Example], list[Example], list[Example]]:
    """(validation examples, held-out examples, the rest) of a task's training split."""
    examples = task.read(ref.train_split or split, data_root(config.data.root))
    if ref.min_train_words:
        examples = [example for example in examples if words(example) >= ref.min_train_words]
    parts = []
    for key, size in (("validation", ref.validation), ("held_out", config.data.held_out if ref.scored else None)):
        part = sample(examples, size, config.data.seed, f"{task.name}/{key}") if size else []
        if len(part) == len(examples) and part:
            raise ConfigError(f"data.{key}: task {task.name} has only {len(examples)} training examples, "
                              f"none left to train on after holding out {size}")
        kept = {id(example) for example in part}
        examples = [example for example in examples if id(example) not in kept]
        parts.append(part)
    return parts[0], parts[1], examples


def stage_data(model: MTAModel, config: Config, sets: dict[str, list[Example]], held_out: bool = False) -> StageData:
    """Encoded examples and mixture rates of every task. `held_out`: the held-out examples,
    which auxiliary tasks lack (they get a rate of 0)."""
    rows: list[list[Encoded]] = [model.encode(sets.get(task.name, [])) for task in model.tasks]
    for task, encoded in zip(model.tasks, rows):
        if not encoded and not held_out:
            raise ValueError(f"task {task.name} has no training examples")
    return with_mixture(config, StageData(rows, [0.0] * len(rows), [task.name for task in model.tasks]))


def task_rates(config: Config, sizes: dict[str, int], mix: MixtureConfig | None = None) -> dict[str, float]:
    """Each task's share of the mixture (`mix`, default the config's), from its number of
    training examples."""
    mix = mix or config.data.mixture
    return mixture_rates(sizes, mix.sampling, mix.temperature, mix.rates)


def with_mixture(config: Config, data: StageData, mix: MixtureConfig | None = None) -> StageData:
    """`data` with the rates of `mix` (default the config's); a task without examples gets 0."""
    sizes = {name: len(rows) for name, rows in zip(data.task_names, data.rows) if rows}
    mix = mix or config.data.mixture
    manual = {name: rate for name, rate in (mix.rates or {}).items() if name in sizes} if mix.rates else None
    rates = task_rates(config, sizes, mix.model_copy(update={"rates": manual}))
    return StageData(data.rows, [rates.get(name, 0.0) for name in data.task_names], data.task_names)


def run_training(config: Config, build: Callable[[ModelConfig, list[Task]], Any] = MTAModel) -> dict[str, Any]:
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
    model = place(build(config.model, tasks), device, ranks, config.distributed.strategy)
    journal = JsonlLog(out / "log.jsonl", enabled=ranks.is_main)

    eval_seconds: dict[str, float] = {}

    def score(name: str, what: str, keep: bool = True) -> dict[str, Any]:
        """{"metrics": on the evaluation split, "validation": on the held-out training examples
        (or None)}; per-example predictions in predictions_<name>.json. With `keep`, kept in
        eval_<name>.json, so that a resumed run does not evaluate again (the main process
        decides: other machines of a run may not share its disk)."""
        path = out / f"eval_{name}.json"
        kept = ranks.from_main(json.loads(path.read_text()) if keep and ranks.is_main and path.exists() else None)
        if kept is not None:
            kept = kept if "metrics" in kept else {"metrics": kept, "validation": None}  # older runs: metrics alone
            eval_seconds[name] = kept.get("seconds", 0.0)
            return kept
        if ranks.is_main:
            log.info("evaluating %s on %s", what, {k: len(v) for k, v in eval_sets.items()})
        result = evaluate_with_predictions(model, eval_sets, config.eval, ranks, what=f"eval {name}")
        held = evaluate_with_predictions(model, validation, config.eval, ranks, what=f"validation {name}") \
            if validation and name != "before" else None
        scores = {"metrics": result.metrics, "validation": held.metrics if held else None,
                  "seconds": round(result.seconds + (held.seconds if held else 0.0), 2)}
        eval_seconds[name] = scores["seconds"]
        if ranks.is_main:
            path.write_text(json.dumps(scores, indent=2))
            write_predictions(out / f"predictions_{name}.json", result.records)
        return scores

    before = score("before", "the untrained model")["metrics"] if config.eval.before_training else None

    def eval_macro() -> float:
        """What `eval_every` keeps the best checkpoint by: the held-out training examples when
        the config holds some out (`data.validation`), else the evaluation split."""
        return macro_average(tasks, evaluate(model, validation or eval_sets, config.eval, ranks))

    data = {"train": stage_data(model, config, train_sets)}
    stages, after_stage = [], {}
    for index, stage in enumerate(config.stages):
        if stage.train_on not in data:
            data[stage.train_on] = stage_data(model, config, training.held_out, held_out=True)
        stage_rows = data[stage.train_on] if stage.mixture is None else with_mixture(config, data[stage.train_on],
                                                                                      stage.mixture)
        result = train_stage(model, stage, stage_rows, out / "stages" / stage.label,
                             journal, seed=config.seed + index, evaluate=eval_macro, ranks=ranks)
        stages.append(result)
        if config.eval.after_each_stage and index < len(config.stages) - 1:
            after_stage[stage.label] = score(f"after_{stage.label}", f"the model after {stage.label}")
    if ranks.is_main:
        model.save(out / "model", {"stages": [vars(result) for result in stages]})
    final = score("final", "the trained model", keep=False)
    report = build_report(model, final, before, stages, {name: len(v) for name, v in eval_sets.items()},
                          after_stage, eval_seconds, trivial_scores(tasks, train_sets, eval_sets))
    if ranks.is_main:
        for line in report["shortfalls"]:
            log.warning("not learned: %s", line)
    return write_report(out, model, report) if ranks.is_main else report
