"""Trivial scores: what a task scores without learning anything from its inputs, on the same
evaluation examples. Classification: the majority label of the training set; regression: the
training mean; generation: the lead sentences of the source (the usual floor of summarization).
A trained model that does not beat them has learned nothing measurable."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence

from alter.data.task import Example, Task
from alter.evaluate.predictions import compute_task_metrics

# A sentence ends at . ! or ? followed by space, or at a line break (a dialogue's turn).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
LEAD_SENTENCES = 2


def lead(text: str, sentences: int) -> str:
    parts = [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]
    return " ".join(parts[:sentences])


def trivial_predictions(task: Task, train: Sequence[Example], examples: Sequence[Example]) -> tuple[list, str]:
    """The trivial prediction of every example, and what it is."""
    if task.kind == "classification":
        label = Counter(example.target for example in train).most_common(1)[0][0]
        return [label] * len(examples), f"majority label: {label}"
    if task.kind == "regression":
        mean = statistics.fmean(float(example.target) for example in train)
        return [mean] * len(examples), f"training mean: {mean:.2f}"
    source = next(iter(task.spec.inputs))
    return [lead(example.inputs[source], LEAD_SENTENCES) for example in examples], f"lead-{LEAD_SENTENCES}"


def trivial_scores(tasks: Sequence[Task], train_sets: dict[str, list[Example]],
                   eval_sets: dict[str, list[Example]]) -> dict[str, dict]:
    """{task: {"metrics": {metric: 0-1}, "rule": what predicts}} for every scored task."""
    results = {}
    for task in tasks:
        if task.name not in eval_sets or not train_sets.get(task.name):
            continue
        examples = eval_sets[task.name]
        predictions, rule = trivial_predictions(task, train_sets[task.name], examples)
        results[task.name] = {"metrics": compute_task_metrics(task, predictions, examples), "rule": rule}
    return results


def trivial_main_scores(tasks: Sequence[Task], trivial: dict[str, dict]) -> dict[str, float]:
    """{task: its trivial main score (0-1)} from a `trivial_scores` result."""
    return {task.name: trivial[task.name]["metrics"][task.main_metric] for task in tasks if task.name in trivial}


def beats_trivial(score: float, floor: float) -> bool:
    """Whether a score is above a trivial one; a tie is not (a constant predictor ties it)."""
    return score > floor + 1e-9


def not_clearly_learned(score: float, interval: Sequence[float] | None, floor: float | None) -> bool:
    """Whether a score is not clearly above `floor` (same scale): the lower end of its 95%
    interval is not above it (the score itself, where no interval is known)."""
    return floor is not None and not beats_trivial(interval[0] if interval else score, floor)


def not_above_trivial(tasks: Sequence[Task], after: dict, trivial: dict) -> dict[str, tuple[float, float]]:
    """{task: (main score, trivial score)} for each task of `after` not above its trivial score."""
    behind = {}
    for task in tasks:
        if task.name in after and task.name in trivial:
            score = after[task.name][task.main_metric]
            floor = trivial[task.name]["metrics"][task.main_metric]
            if not beats_trivial(score, floor):
                behind[task.name] = (score, floor)
    return behind


def shortfalls(tasks: Sequence[Task], after: dict, trivial: dict, before: dict | None,
               intervals: dict[str, Sequence[float]] | None = None) -> list[str]:
    """One line for each task that is not clearly learned: the lower end of its main score's
    95% interval over the evaluation examples (`intervals`, 0-1, `score_interval`; the score
    itself where none is known) is not above its trivial score, or not above the untrained
    model's. A point score a little above the floor is noise on a few hundred examples."""
    lines = []
    for task in tasks:
        if task.name not in after:
            continue
        metric = task.main_metric
        score = after[task.name][metric]
        interval = (intervals or {}).get(task.name)
        shown = f"{metric} {100 * score:.1f}" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
                                                 if interval else "")
        floor = trivial[task.name]["metrics"][metric] if task.name in trivial else None
        untrained = before[task.name][metric] if before and task.name in before else None
        floors = []
        if not_clearly_learned(score, interval, floor):
            floors.append(f"its trivial score {100 * floor:.1f} ({trivial[task.name]['rule']})")
        if not_clearly_learned(score, interval, untrained):
            floors.append(f"the untrained model's {100 * untrained:.1f}")
        if floors:
            where = "the lower end of its 95% interval" if interval else "it"
            lines.append(f"{task.name}: {shown} is not clearly learned: {where} is not above {' nor '.join(floors)}")
    return lines
