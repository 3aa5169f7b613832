"""Task mixtures: sampling rates and a deterministic plan of mixed-task, length-grouped batches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

Sampling = Literal["proportional", "temperature", "uniform", "manual"]


def mixture_rates(sizes: dict[str, int], sampling: Sampling = "proportional", temperature: float = 2.0,
                  manual: dict[str, float] | None = None) -> dict[str, float]:
    """Sampling rate of each task, summing to 1.

    proportional: rate ~ size; temperature (T5): rate ~ size ** (1 / T); uniform: equal;
    manual: the given weights, normalised.
    """
    names = list(sizes)
    if sampling == "manual":
        manual = manual or {}
        missing = [name for name in names if name not in manual]
        if missing:
            raise ValueError(f"data.mixture.rates: no rate for task(s) {', '.join(missing)}")
        weights = np.array([manual[name] for name in names], dtype=float)
    elif sampling == "uniform":
        weights = np.ones(len(names))
    else:
        exponent = 1.0 if sampling == "proportional" else 1.0 / temperature
        weights = np.array([sizes[name] for name in names], dtype=float) ** exponent
    if weights.sum() <= 0:
        raise ValueError("data.mixture: the rates sum to zero")
    return dict(zip(names, (weights / weights.sum()).tolist()))


def batch_plan(lengths: Sequence[Sequence[int]], rates: Sequence[float], num_batches: int,
               batch_size: int, seed: int, pool_batches: int = 16,
               one_task: bool = False) -> list[list[tuple[int, int]]]:
    """The whole run's batches, as (task index, example index) pairs, fixed by the seed.

    Tasks are drawn by their rates: for each row of a mixed batch, or, with `one_task`, for each
    batch, which then holds `batch_size` rows of that task alone (MT-DNN's task-homogeneous
    batches: a task's expert and head step on a whole batch of their task, not on its few rows
    of a mixed one). Each task walks through fresh permutations of its examples. Every
    `pool_batches` batches' worth of draws is sorted by length (per task, with `one_task`) and
    cut into batches (little padding), whose order is then shuffled. Because the plan depends
    only on the seed, a resumed run continues with exactly the batches it would have seen.
    """
    rng = np.random.default_rng(seed)
    permutations = [np.empty(0, dtype=int) for _ in lengths]
    cursors = [0] * len(lengths)

    def next_example(task: int) -> int:
        if cursors[task] >= len(permutations[task]):
            permutations[task] = rng.permutation(len(lengths[task]))
            cursors[task] = 0
        cursors[task] += 1
        return int(permutations[task][cursors[task] - 1])

    def by_length(draws: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        draws.sort(key=lambda pair: lengths[pair[0]][pair[1]])
        return [draws[i: i + batch_size] for i in range(0, len(draws), batch_size)]

    plan: list[list[tuple[int, int]]] = []
    while len(plan) < num_batches:
        count = min(pool_batches, num_batches - len(plan))
        if one_task:
            batches_of = Counter(rng.choice(len(lengths), size=count, p=np.asarray(rates)).tolist())
            batches = []
            for task in sorted(batches_of):
                batches += by_length([(task, next_example(task)) for _ in range(batches_of[task] * batch_size)])
        else:
            tasks = rng.choice(len(lengths), size=count * batch_size, p=np.asarray(rates))
            batches = by_length([(int(task), next_example(int(task))) for task in tasks])
        plan.extend(batches[i] for i in rng.permutation(len(batches)))
    return plan
