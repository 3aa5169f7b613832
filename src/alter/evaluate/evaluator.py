"""Run a model on each task's evaluation examples and compute that task's metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alter.config import EvalConfig
from alter.data.task import Example, Task
from alter.evaluate.predictions import compute_task_metrics, task_record
from alter.evaluate.ranks import SINGLE, Ranks
from alter.models.contract import TrainableModel


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # {task: {metric: value}} on 0-1 scales
    records: dict[str, dict[str, Any]]  # {task: per-example predictions} (evaluate/predictions.py)
    seconds: float


def evaluate(model: TrainableModel, eval_sets: dict[str, list[Example]], config: EvalConfig,
             ranks: Ranks = SINGLE) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} on 0-1 scales."""
    return evaluate_with_predictions(model, eval_sets, config, ranks).metrics


def evaluate_with_predictions(model: TrainableModel, eval_sets: dict[str, list[Example]], config: EvalConfig,
                              ranks: Ranks = SINGLE, what: str | None = None) -> Evaluation:
    """Scores and per-example predictions; all tasks' examples predicted together (each
    process of a distributed run predicts its share). `what` labels a progress bar."""
    started = time.perf_counter()
    everything = [example for examples in eval_sets.values() for example in examples]
    predictions = predict_shared(model, everything, config, ranks, what)
    metrics, records, start = {}, {}, 0
    for name, examples in eval_sets.items():
        task = model.tasks[model.task_id(name)]
        values = [value for value, _ in predictions[start: start + len(examples)]]
        start += len(examples)
        metrics[name] = compute_task_metrics(task, values, examples)
        records[name] = task_record(task, values, examples)
    return Evaluation(metrics, records, time.perf_counter() - started)


def predict_shared(model: TrainableModel, examples: Sequence[Example], config: EvalConfig,
                   ranks: Ranks = SINGLE, progress: str | None = None) -> list:
    """Predictions in input order, each rank predicting its share.

    Every rank gets as many examples of each kind (scored, generated) as every other, the
    last of a kind repeated to fill: `predict` then runs the same number of batches on every
    rank, which FSDP needs, since each forward pass gathers weights from all ranks."""
    if not ranks.distributed:
        return model.predict(examples, config.batch_size, config.max_new_tokens, config.num_beams, progress)
    by_kind: dict[bool, list[int]] = {}
    for index, example in enumerate(examples):
        generated = model.tasks[model.task_id(example.task)].kind == "generation"
        by_kind.setdefault(generated, []).append(index)
    # Each kind's indices, padded to a multiple of the ranks: rank::world takes equal shares.
    order = [index for indices in by_kind.values()
             for index in indices + [indices[-1]] * (-len(indices) % ranks.world_size)]
    mine = model.predict([examples[index] for index in ranks.shard(order)], config.batch_size,
                         config.max_new_tokens, config.num_beams, progress if ranks.is_main else None)
    results: list = [None] * len(examples)
    for index, prediction in zip(order, ranks.unshard(mine, len(order))):
        results[index] = prediction  # a repeated example's copies are the same prediction
    return results


def main_score(task: Task, metrics: dict[str, float]) -> float:
    return metrics[task.main_metric]


def macro_average(tasks: Sequence[Task], results: dict[str, dict[str, float]]) -> float:
    """Mean over tasks of each task's main metric, on a 0-100 scale."""
    scores = [main_score(task, results[task.name]) for task in tasks if task.name in results]
    return 100.0 * sum(scores) / max(len(scores), 1)
