"""`alter train`: config -> data -> model -> stages -> evaluation -> report and saved model."""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from alter.config import Config, ConfigError, ModelConfig
from alter.data.collate import Encoded
from alter.data.mixture import mixture_rates
from alter.data.registry import builtin_registry
from alter.data.task import Example, Task, data_root
from alter.distributed import pick_device, place, start
from alter.evaluate.evaluator import evaluate, macro_average
from alter.evaluate.report import build_report, write_report
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


def load_split(config: Config, tasks: Sequence[Task], split: str, training: bool) -> dict[str, list[Example]]:
    root = data_root(config.data.root)
    refs = {ref.name: ref for ref in config.data.refs()}
    sets = {}
    for task in tasks:
        ref = refs[task.name]
        examples = task.read(split, root)
        if training and ref.min_train_words:
            examples = [example for example in examples if words(example) >= ref.min_train_words]
        sets[task.name] = sample(examples, ref.max_train if training else ref.max_eval, config.data.seed, task.name)
    return sets


def stage_data(model: MTAModel, config: Config, train_sets: dict[str, list[Example]]) -> StageData:
    rows: list[list[Encoded]] = [model.encode(train_sets[task.name]) for task in model.tasks]
    for task, encoded in zip(model.tasks, rows):
        if not encoded:
            raise ValueError(f"task {task.name} has no training examples")
    sizes = {task.name: len(encoded) for task, encoded in zip(model.tasks, rows)}
    rates = task_rates(config, sizes)
    return StageData(rows, [rates[name] for name in sizes], list(sizes))


def task_rates(config: Config, sizes: dict[str, int]) -> dict[str, float]:
    """Each task's share of the mixture, from its number of training examples and the config."""
    mix = config.data.mixture
    return mixture_rates(sizes, mix.sampling, mix.temperature, mix.rates)


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
    train_sets = load_split(config, tasks, config.data.train_split, training=True)
    eval_sets = load_split(config, tasks, config.data.eval_split, training=False)
    model = place(build(config.model, tasks), device, ranks, config.distributed.strategy)
    journal = JsonlLog(out / "log.jsonl", enabled=ranks.is_main)

    def evaluate_once(path: Path, what: str) -> dict[str, dict[str, float]]:
        """Scores kept in `path`, so that a resumed run does not evaluate again (the main
        process decides: other machines of a run may not share its disk)."""
        kept = ranks.from_main(json.loads(path.read_text()) if ranks.is_main and path.exists() else None)
        if kept is not None:
            return kept
        if ranks.is_main:
            log.info("evaluating %s on %s", what, {k: len(v) for k, v in eval_sets.items()})
        scores = evaluate(model, eval_sets, config.eval, ranks)
        if ranks.is_main:
            path.write_text(json.dumps(scores, indent=2))
        return scores

    before = evaluate_once(out / "eval_before.json", "the untrained model") if config.eval.before_training else None

    def eval_macro() -> float:
        return macro_average(tasks, evaluate(model, eval_sets, config.eval, ranks))

    data = stage_data(model, config, train_sets)
    stages, after_stage = [], {}
    for index, stage in enumerate(config.stages):
        result = train_stage(model, stage, data, out / "stages" / stage.label, journal,
                             seed=config.seed + index, evaluate=eval_macro, ranks=ranks)
        stages.append(result)
        if config.eval.after_each_stage and index < len(config.stages) - 1:
            after_stage[stage.label] = evaluate_once(out / f"eval_after_{stage.label}.json",
                                                     f"the model after {stage.label}")
    if ranks.is_main:
        model.save(out / "model", {"stages": [vars(result) for result in stages]})
    after = evaluate(model, eval_sets, config.eval, ranks)
    report = build_report(model, after, before, stages, {name: len(v) for name, v in eval_sets.items()}, after_stage)
    return write_report(out, model, report) if ranks.is_main else report
