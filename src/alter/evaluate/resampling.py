"""A task's main metric on bootstrap resamples of its evaluation examples, from the
per-example record of an evaluation (evaluate/predictions.py): what the paired comparisons of
`alter experiment` and the "not clearly learned" flag of a run rest on.

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


def score_interval(runs: Sequence[Record], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval (0-1) of a task's main score averaged over `runs` (one
    record per seed, on the same examples): each resample draws the seeds, then the examples
    (the same draw for every seed), as the paired comparisons do; with one run, the examples."""
    rng = np.random.default_rng(seed)
    size = len(runs[0]["sources"])
    index = rng.integers(0, size, (resamples, size))  # (R, n)
    scores = np.stack([resampled_scores(run, index) for run in runs])  # (S, R)
    draws = rng.integers(0, len(runs), (resamples, len(runs)))  # (R, S)
    means = np.take_along_axis(scores, draws.T, axis=0).mean(0)  # (R,)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)
