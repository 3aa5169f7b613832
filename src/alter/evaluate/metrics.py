"""Metrics as plain functions: (predictions, references) -> {name: value}, values on a 0-1 scale.

ROUGE-L is sentence-level LCS (`rougeL`); `rougeLsum` splits summaries into sentences
(newlines) first, as in the summarization literature. Both are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(predictions: Sequence, references: Sequence) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(references, predictions))}


def f1(predictions: Sequence, references: Sequence, labels: Sequence[str] | None = None) -> dict[str, float]:
    """With two labels, the F1 of the positive one: the task's second label (GLUE's label 1:
    mrpc's `equivalent`, qqp's `duplicate`), as GLUE reports it. Otherwise the macro F1."""
    if labels is None or len(labels) != 2:
        return {"f1": float(f1_score(references, predictions, average="macro"))}
    return {"f1": float(f1_score(references, predictions, pos_label=labels[1], average="binary"))}


def mcc(predictions: Sequence, references: Sequence) -> dict[str, float]:
    return {"mcc": float(matthews_corrcoef(references, predictions))}


def _correlation(function: Callable, predictions: Sequence[float], references: Sequence[float]) -> float:
    # Undefined for constant predictions (a float repeated may show a std of 1e-16): report none.
    if np.ptp(predictions) == 0 or np.ptp(references) == 0:
        return 0.0
    return float(function(predictions, references)[0])


def pearson(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    return {"pearson": _correlation(pearsonr, predictions, references)}


def spearman(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    return {"spearman": _correlation(spearmanr, predictions, references)}


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """F-measure, best over the references of each example, averaged over examples."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, references):
        scores = scorer.score_multi(list(refs), prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    count = max(len(predictions), 1)
    return {name: total / count for name, total in totals.items()}


METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman,
    **dict.fromkeys(ROUGE_TYPES, rouge),
}


NEEDS_LABELS = {"f1"}  # metrics that must know the task's labels in order


def compute(names: Sequence[str], predictions: Sequence, references: Sequence,
            labels: Sequence[str] | None = None) -> dict[str, float]:
    """Every metric in `names`, each function run once even if it yields several names."""
    results: dict[str, float] = {}
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric '{name}'; known: {', '.join(METRICS)}")
        if name not in results:
            extra = {"labels": labels} if name in NEEDS_LABELS else {}
            results.update(METRICS[name](predictions, references, **extra))
    return {name: results[name] for name in names}
