"""Metrics as GLUE reports them."""

from __future__ import annotations

import pytest

from alter.data.task import Example
from alter.evaluate.metrics import compute, pearson, spearman
from alter.evaluate.predictions import compute_task_metrics


def test_mrpc_f1_is_the_f1_of_equivalent_pairs(registry):
    mrpc = registry.get("mrpc")
    examples = [Example("mrpc", {}, label) for label in ["equivalent"] * 7 + ["not_equivalent"] * 3]
    metrics = compute_task_metrics(mrpc, ["equivalent"] * 10, examples)  # always "equivalent"
    # precision 0.7, recall 1: F1 = 2 * 0.7 / 1.7, whatever the labels' alphabetical order
    assert metrics["f1"] == pytest.approx(2 * 0.7 / 1.7)
    assert metrics["accuracy"] == pytest.approx(0.7)


def test_f1_of_more_than_two_labels_is_the_macro_average():
    predictions, references = ["a", "b", "c", "c"], ["a", "b", "c", "a"]
    # per label: a 2/3, b 1, c 2/3
    assert compute(["f1"], predictions, references, ["a", "b", "c"])["f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_a_constant_prediction_has_no_correlation_even_with_rounding():
    """A training mean repeated (the trivial regressor): numpy's std of [2.58] * 7 is 4e-16, not 0."""
    assert spearman([2.58] * 7, [1, 2, 3, 4, 5, 6, 7]) == {"spearman": 0.0}
    assert pearson([2.58] * 7, [1, 2, 3, 4, 5, 6, 7]) == {"pearson": 0.0}


def test_every_metric_name_a_task_may_ask_for_has_its_function():
    from alter.data.spec import METRIC_NAMES
    from alter.evaluate.metrics import METRICS

    assert set(METRIC_NAMES) == set(METRICS)
