"""Per-example predictions of an evaluation, kept beside its scores, so that two systems can be
compared example by example on the same examples (the paired bootstrap of `alter experiment`).

A task's record holds what its main metric needs on any subset of its examples: predictions
and references for a metric of the whole set (F1, MCC, correlations), or each example's own
score for a mean over examples (accuracy, ROUGE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alter.data.task import Example, Task
from alter.evaluate.metrics import compute

PER_EXAMPLE = {"accuracy", "rouge1", "rouge2", "rougeL", "rougeLsum"}  # means over examples


def references_of(task: Task, examples: Sequence[Example]) -> list:
    """What a task's metrics compare predictions with: every reference text of a summary, the
    label or score otherwise."""
    if task.kind == "generation":
        return [list(example.references) for example in examples]
    return [example.target for example in examples]


def compute_task_metrics(task: Task, predictions: list, examples: Sequence[Example]) -> dict[str, float]:
    """The task's metrics of `predictions` against `examples`' references."""
    return compute(task.metrics, predictions, references_of(task, examples), task.spec.labels)


def task_record(task: Task, predictions: Sequence, examples: Sequence[Example]) -> dict[str, Any]:
    """{"metric", "labels", "sources", "predictions", "references"}, and "scores" (0-1, one
    per example) when the main metric is a mean over examples."""
    metric = task.main_metric
    references = references_of(task, examples)
    record: dict[str, Any] = {"metric": metric, "labels": task.spec.labels, "sources": [e.source for e in examples],
                              "predictions": list(predictions)}
    if metric in PER_EXAMPLE:
        record["scores"] = [compute([metric], [p], [r], task.spec.labels)[metric]
                            for p, r in zip(predictions, references)]
    if task.kind != "generation":
        record["references"] = references
    return record


def write_predictions(path: Path, records: dict[str, dict[str, Any]]) -> None:
    path.write_text(json.dumps(records))


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text())
