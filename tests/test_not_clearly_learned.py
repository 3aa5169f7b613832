""""Not clearly learned": a task is flagged when the lower end of its score's 95% bootstrap
interval is not above its trivial score (or the untrained model's), not when the point score
merely ties it."""

from __future__ import annotations

import math

import pytest

from alter.evaluate.resampling import score_interval
from alter.evaluate.trivial import shortfalls
from alter.experiment.results import below_trivial


def _accuracy_record(correct: int, total: int) -> dict:
    return {"metric": "accuracy", "sources": [f"f:{i}" for i in range(total)],
            "scores": [1.0] * correct + [0.0] * (total - correct)}


def test_an_accuracy_interval_is_the_binomial_one():
    """118 of 300 right (39.3%): the normal approximation gives 39.3 ± 5.5."""
    low, high = score_interval([_accuracy_record(118, 300)], resamples=4000)
    half = 1.96 * math.sqrt(0.3933 * 0.6067 / 300)
    assert low == pytest.approx(0.3933 - half, abs=0.01) and high == pytest.approx(0.3933 + half, abs=0.01)


def test_the_interval_over_seeds_resamples_the_seeds():
    """Two seeds, each constant over its examples (30% and 70% right on every resample): a
    draw of two seeds averages 0.3, 0.5 or 0.7 with odds 1:2:1, so the interval is [0.3, 0.7]."""
    runs = [{"metric": "accuracy", "sources": ["a", "b"], "scores": [score, score]} for score in (0.3, 0.7)]
    assert score_interval(runs, resamples=4000) == pytest.approx((0.3, 0.7))


class _Task:
    def __init__(self, name: str):
        self.name, self.main_metric = name, "accuracy"


TRIVIAL = {"nli": {"metrics": {"accuracy": 0.38}, "rule": "majority label: no"}}


def test_a_score_just_above_trivial_on_few_examples_is_flagged_with_its_interval():
    after = {"nli": {"accuracy": 0.3933}}
    interval = score_interval([_accuracy_record(118, 300)])
    [line] = shortfalls([_Task("nli")], after, TRIVIAL, {"nli": {"accuracy": 0.303}}, {"nli": interval})
    assert line.startswith(f"nli: accuracy 39.3 [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}] is not clearly "
                           "learned: the lower end of its 95% interval is not above its trivial score 38.0")
    assert "untrained" not in line  # 30.3 is below the interval


def test_a_clear_gain_is_not_flagged_and_the_untrained_score_counts_too():
    interval = score_interval([_accuracy_record(180, 300)])  # 60%: [54.5, 65.5]
    assert shortfalls([_Task("nli")], {"nli": {"accuracy": 0.6}}, TRIVIAL, None, {"nli": interval}) == []
    [line] = shortfalls([_Task("nli")], {"nli": {"accuracy": 0.6}}, TRIVIAL, {"nli": {"accuracy": 0.58}},
                        {"nli": interval})
    assert "not above the untrained model's 58.0" in line


def test_the_experiment_flags_a_system_by_its_interval():
    trivial = {"nli": {"metrics": {"accuracy": 38.0}, "rule": "majority label: no"}}
    system = {"tasks": {"nli": {"accuracy": 39.3}}, "main_metrics": {"nli": "accuracy"}}
    [line] = below_trivial({"mta": {**system, "tasks_ci95": {"nli": [33.8, 44.9]}}}, trivial)
    assert line == "mta on nli: accuracy 39.3 [33.8, 44.9] is not clearly learned: trivial 38.0 (majority label: no)"
    assert below_trivial({"mta": {**system, "tasks_ci95": {"nli": [38.5, 40.1]}}}, trivial) == []
