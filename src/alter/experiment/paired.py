"""Paired bootstrap of the macro difference between two systems on the same examples.

Each resample draws every task's evaluation examples with replacement (the same draw for both
systems and for every seed); a system's macro on a resample is the mean over its seeds of the
mean over tasks of each task's main metric on the drawn examples. The interval is the 2.5th and
97.5th percentiles of the resampled differences.

Metrics are computed for all resamples at once: a mean over examples from per-example scores,
F1 and MCC of two labels from confusion counts, correlations from the resampled columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from alter.evaluate.metrics import compute

Record = dict[str, Any]  # one task's per-example predictions (evaluate/predictions.py)


def _binary_counts(record: Record, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """Confusion counts of each resample, positive = the second label; each (R,)."""
    positive = record["labels"][1]
    predicted = np.array([p == positive for p in record["predictions"]])[index]  # (R, n)
    actual = np.array([r == positive for r in record["references"]])[index]  # (R, n)
    tp, fp = (predicted & actual).sum(1), (predicted & ~actual).sum(1)
    fn, tn = (~predicted & actual).sum(1), (~predicted & ~actual).sum(1)
    return tp.astype(float), fp.astype(float), fn.astype(float), tn.astype(float)


def _correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair; 0 where either row is constant. (R, n) -> (R,)."""
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    denominator = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    return np.divide((x * y).sum(1), denominator, out=np.zeros(len(x)), where=denominator > 1e-12)


def resampled_scores(record: Record, index: np.ndarray) -> np.ndarray:
    """The task's main metric (0-1) on each resample of its examples; index (R, n) -> (R,)."""
    metric = record["metric"]
    if "scores" in record:  # a mean over examples
        return np.asarray(record["scores"], dtype=float)[index].mean(1)
    binary = record.get("labels") is not None and len(record["labels"]) == 2
    if metric == "f1" and binary:
        tp, fp, fn, _ = _binary_counts(record, index)
        denominator = 2 * tp + fp + fn
        return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
    if metric == "mcc" and binary:
        tp, fp, fn, tn = _binary_counts(record, index)
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.divide(tp * tn - fp * fn, denominator, out=np.zeros(len(tp)), where=denominator > 0)
    if metric in ("pearson", "spearman"):
        x = np.asarray(record["predictions"], dtype=float)[index]  # (R, n)
        y = np.asarray(record["references"], dtype=float)[index]
        if metric == "spearman":
            x, y = rankdata(x, axis=1), rankdata(y, axis=1)
        return _correlation(x, y)
    # Anything else (e.g. F1 or MCC of three labels): the metric function on each resample.
    predictions, references = record["predictions"], record["references"]
    return np.array([compute([metric], [predictions[i] for i in rows], [references[i] for i in rows],
                             record.get("labels"))[metric] for rows in index])


def _check_aligned(task: str, records: Sequence[Record]) -> int:
    """Every record of a task covers the same examples in the same order; their number."""
    sources = records[0]["sources"]
    for record in records[1:]:
        if record["sources"] != sources:
            raise ValueError(f"task {task}: the systems were scored on different examples; a paired comparison "
                             "needs the same evaluation examples (same data caps and data.seed)")
    return len(sources)


def paired_bootstrap(runs_a: Sequence[dict[str, Record]], runs_b: Sequence[dict[str, Record]],
                     tasks: Sequence[str], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Macro of A minus macro of B (0-100), seeds pooled, with its 95% percentile interval.

    `runs_a`, `runs_b`: one {task: record} per seed of each system."""
    rng = np.random.default_rng(seed)
    macro_a, macro_b = np.zeros(resamples + 1), np.zeros(resamples + 1)
    for task in tasks:
        size = _check_aligned(task, [run[task] for run in [*runs_a, *runs_b]])
        # Row 0 is the full set, the others resamples.
        index = np.vstack([np.arange(size), rng.integers(0, size, (resamples, size))])  # (R + 1, n)
        macro_a += np.mean([resampled_scores(run[task], index) for run in runs_a], axis=0)
        macro_b += np.mean([resampled_scores(run[task], index) for run in runs_b], axis=0)
    difference = 100.0 * (macro_a - macro_b) / len(tasks)  # (R + 1,)
    low, high = np.percentile(difference[1:], [2.5, 97.5])
    return {"macro_diff": round(float(difference[0]), 2), "ci95": [round(float(low), 2), round(float(high), 2)],
            "tasks": list(tasks), "resamples": resamples}


def excludes_zero(paired: dict[str, Any]) -> bool:
    low, high = paired["ci95"]
    return low > 0 or high < 0
