"""`alter train`: config -> data -> model -> stages -> evaluation -> report and saved model."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from alter.config import Config, ConfigError, ModelConfig
from alter.data.prepare import load_split, load_tasks, load_training, stage_data, with_mixture
from alter.data.task import Task
from alter.distributed import pick_device, place, start
from alter.evaluate.evaluator import evaluate, evaluate_with_predictions, macro_average
from alter.evaluate.predictions import write_predictions
from alter.evaluate.report import build_report, write_report
from alter.evaluate.trivial import trivial_scores
from alter.model import MTAModel
from alter.train.loop import JsonlLog, train_stage
from alter.train.resume import resume_conflict

log = logging.getLogger(__name__)


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
