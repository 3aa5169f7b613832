"""Paired bootstrap of the macro difference between two systems on the same examples, with
the seeds' spread in it.

Each resample draws, at two levels, what a new experiment could have drawn: the seeds (with
replacement from those run; one draw for both systems when they ran the same seeds, seed by
seed, else one draw each), then every task's evaluation examples (the same draw for both
systems and every seed). A system's macro on a resample is the mean over its drawn seeds of
the mean over tasks of each task's main metric on the drawn examples. The interval is the
2.5th and 97.5th percentiles of the resampled differences: it describes the method, not only
these seeds. `ci95_examples` is the interval with the seeds held fixed (examples alone);
`seed_t_interval` gives, beside it, a t-interval over per-seed macro differences.

Metrics are computed for all resamples at once (`alter.evaluate.resampling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import t

from alter.evaluate.resampling import Record, resampled_scores


def _check_aligned(task: str, records: Sequence[Record]) -> int:
    """Every record of a task covers the same examples in the same order; their number."""
    sources = records[0]["sources"]
    for record in records[1:]:
        if record["sources"] != sources:
            raise ValueError(f"task {task}: the systems were scored on different examples; a paired comparison "
                             "needs the same evaluation examples (same data caps and data.seed)")
    return len(sources)


def _seed_means(scores: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """scores (S, R + 1): one system's score per seed on the full set (column 0) and on each
    resample; draws (R, S) seed indices -> (R + 1,): the mean over all seeds on the full set,
    over each resample's drawn seeds on that resample."""
    resampled = np.take_along_axis(scores[:, 1:], draws.T, axis=0).mean(0)  # (R,)
    return np.concatenate([[scores[:, 0].mean()], resampled])


def seed_t_interval(differences: Sequence[float]) -> list[float] | None:
    """The 95% t-interval of the mean of per-seed differences; None with fewer than two."""
    values = np.asarray(differences, dtype=float)
    if len(values) < 2:
        return None
    half = t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return [round(float(values.mean() - half), 2), round(float(values.mean() + half), 2)]


def paired_bootstrap(runs_a: Sequence[dict[str, Record]], runs_b: Sequence[dict[str, Record]],
                     tasks: Sequence[str], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Macro of A minus macro of B (0-100) over their seeds, with its 95% interval over seeds
    and examples (module docstring).

    `runs_a`, `runs_b`: one {task: record} per seed of each system; when both hold as many
    runs, the i-th of each is taken to be the same seed and they are drawn together."""
    rng = np.random.default_rng(seed)
    paired_seeds = len(runs_a) == len(runs_b)
    draws_a = rng.integers(0, len(runs_a), (resamples, len(runs_a)))  # (R, S_a)
    draws_b = draws_a if paired_seeds else rng.integers(0, len(runs_b), (resamples, len(runs_b)))
    scores_a, scores_b = np.zeros((len(runs_a), resamples + 1)), np.zeros((len(runs_b), resamples + 1))
    for task in tasks:
        size = _check_aligned(task, [run[task] for run in [*runs_a, *runs_b]])
        # Column 0 is the full set, the others resamples.
        index = np.vstack([np.arange(size), rng.integers(0, size, (resamples, size))])  # (R + 1, n)
        scores_a += np.stack([resampled_scores(run[task], index) for run in runs_a])  # (S_a, R + 1)
        scores_b += np.stack([resampled_scores(run[task], index) for run in runs_b])
    scale = 100.0 / len(tasks)  # task sums -> macro on 0-100
    difference = scale * (_seed_means(scores_a, draws_a) - _seed_means(scores_b, draws_b))  # (R + 1,)
    examples_only = scale * (scores_a[:, 1:].mean(0) - scores_b[:, 1:].mean(0))  # (R,) seeds held fixed
    low, high = np.percentile(difference[1:], [2.5, 97.5])
    fixed_low, fixed_high = np.percentile(examples_only, [2.5, 97.5])
    result = {"macro_diff": round(float(difference[0]), 2), "ci95": [round(float(low), 2), round(float(high), 2)],
              "ci95_examples": [round(float(fixed_low), 2), round(float(fixed_high), 2)],
              "tasks": list(tasks), "resamples": resamples, "seeds_resampled": max(len(runs_a), len(runs_b)) > 1}
    return result


def excludes_zero(paired: dict[str, Any]) -> bool:
    low, high = paired["ci95"]
    return low > 0 or high < 0
