"""Decision offsets: per-task label offsets, fitted on the validation examples, that move a
classification task's decision threshold.

A verbalizer model trained on an unbalanced task (cola: 70% `acceptable`) can rank its
examples usefully and still put every one on the majority side (transfer set, seed 0: the
margin's ROC AUC was 0.60, yet every sentence came out `acceptable`, MCC 0). Adding an
offset to each label's log-probability before the argmax moves the threshold without
touching the model; the offsets that maximise the task's main metric on the validation
examples (held out of training, never the evaluation split) are kept with the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alter.data.task import Example, Task
from alter.evaluate.predictions import compute_task_metrics
from alter.models.mta_model import SMALLEST_PROB

_ROUNDS = 2  # coordinate-ascent sweeps over the labels (one suffices for two labels)


def fit_offsets(task: Task, predictions: Sequence[tuple[str, dict[str, float]]],
                examples: Sequence[Example]) -> list[float]:
    """Offsets (one per label, the first 0) that maximise the task's main metric on `examples`,
    given the model's `predictions` (label, probability of each label) for them.

    Each label's offset in turn is set to the best of the thresholds its examples' margins
    allow (the midpoints between sorted margins), the others held; zero offsets are kept
    unless a change scores strictly higher, so a task that needs no offset gets none."""
    labels = task.spec.labels
    table = np.array([[probs[label] for label in labels] for _, probs in predictions])  # (N, C)
    logp = np.log(np.clip(table, SMALLEST_PROB, None))  # (N, C)
    offsets = np.zeros(len(labels))

    def score(candidate: np.ndarray) -> float:
        chosen = [labels[index] for index in (logp + candidate).argmax(1)]
        return compute_task_metrics(task, chosen, examples)[task.main_metric]

    best = score(offsets)
    for _ in range(_ROUNDS if len(labels) > 2 else 1):
        for label in range(1, len(labels)):
            others = np.delete(logp + offsets, label, axis=1).max(1)  # (N,) the best rival of each example
            margins = np.sort(logp[:, label] - others)  # (N,) where this label starts to win
            thresholds = (margins[1:] + margins[:-1]) / 2 if len(margins) > 1 else margins
            for threshold in np.concatenate([thresholds, margins[:1] - 1, margins[-1:] + 1]):
                candidate = offsets.copy()
                candidate[label] = -threshold
                value = score(candidate)
                if value > best + 1e-12:
                    best, offsets = value, candidate
    return offsets.tolist()
