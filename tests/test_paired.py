"""The paired bootstrap on hand-made predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from alter.evaluate.metrics import compute
from alter.evaluate.resampling import resampled_scores
from alter.experiment.paired import excludes_zero, paired_bootstrap, seed_t_interval


def accuracy_record(correct: list[bool]) -> dict:
    return {"metric": "accuracy", "labels": ["no", "yes"], "sources": [f"dev:{i}" for i in range(len(correct))],
            "predictions": ["yes" if c else "no" for c in correct], "references": ["yes"] * len(correct),
            "scores": [float(c) for c in correct]}


def test_identical_systems_differ_by_nothing():
    run = {"rte": accuracy_record([True, False] * 50)}
    paired = paired_bootstrap([run], [run], ["rte"])
    assert paired["macro_diff"] == 0.0 and paired["ci95"] == [0.0, 0.0]
    assert not excludes_zero(paired)


def test_always_right_against_right_on_half_the_examples():
    """d_i is 1 on half of 400 examples: the difference is 50 points, its standard error
    100 * sqrt(0.25 / 400) = 2.5, so the 95% interval is about 50 +- 4.9."""
    always = {"rte": accuracy_record([True] * 400)}
    half = {"rte": accuracy_record([True, False] * 200)}
    paired = paired_bootstrap([always], [half], ["rte"], resamples=4000)
    assert paired["macro_diff"] == 50.0
    low, high = paired["ci95"]
    assert 44.0 < low < 46.5 and 53.5 < high < 56.0
    assert excludes_zero(paired)
    reverse = paired_bootstrap([half], [always], ["rte"], resamples=4000)
    assert reverse["macro_diff"] == -50.0 and excludes_zero(reverse)


def test_seeds_are_pooled_and_tasks_averaged():
    """Seed means: A = (100 + 50) / 2 on rte, B = 50; on a second task both are right:
    macro difference (25 + 0) / 2 = 12.5."""
    a = [{"rte": accuracy_record([True] * 100), "sst2": accuracy_record([True] * 100)},
         {"rte": accuracy_record([True, False] * 50), "sst2": accuracy_record([True] * 100)}]
    b = [{"rte": accuracy_record([True, False] * 50), "sst2": accuracy_record([True] * 100)}]
    assert paired_bootstrap(a, b, ["rte", "sst2"])["macro_diff"] == 12.5


def test_different_examples_cannot_be_paired():
    a = {"rte": accuracy_record([True] * 10)}
    b = {"rte": {**accuracy_record([True] * 10), "sources": [f"other:{i}" for i in range(10)]}}
    with pytest.raises(ValueError, match="different examples"):
        paired_bootstrap([a], [b], ["rte"])


@pytest.mark.parametrize("metric,labels", [("f1", ["no", "yes"]), ("mcc", ["no", "yes"]),
                                           ("spearman", None), ("pearson", None), ("mcc", ["a", "b", "c"])])
def test_resampled_metrics_equal_the_metric_functions(metric, labels):
    rng = np.random.default_rng(1)
    size = 60
    if labels:
        predictions = [labels[i] for i in rng.integers(0, len(labels), size)]
        references = [labels[i] for i in rng.integers(0, len(labels), size)]
    else:
        references = rng.uniform(0, 5, size).round(1).tolist()
        predictions = (np.asarray(references) + rng.normal(0, 1.5, size)).round(1).tolist()
    record = {"metric": metric, "labels": labels, "sources": list(range(size)), "predictions": predictions,
              "references": references}
    index = rng.integers(0, size, (5, size))
    expected = [compute([metric], [predictions[i] for i in rows], [references[i] for i in rows], labels)[metric]
                for rows in index]
    np.testing.assert_allclose(resampled_scores(record, index), expected, atol=1e-9)


def test_seeds_that_disagree_widen_the_interval():
    """A beats B by 25 points on one seed and loses by 30 on the other, each on 400 examples:
    with the seeds held fixed the mean difference (-2.5) has a narrow interval, but a new pair
    of seeds could land on either side, so the interval over seeds and examples is wide."""
    half = accuracy_record([True, False] * 200)
    a = [{"rte": accuracy_record([True, True, True, False] * 100)}, {"rte": half}]  # seed 0: 75, seed 1: 50
    b = [{"rte": half}, {"rte": accuracy_record([True, True, True, True, False] * 80)}]  # 50, then 80
    paired = paired_bootstrap(a, b, ["rte"], resamples=4000)
    assert paired["macro_diff"] == -2.5  # (25 - 30) / 2
    low, high = paired["ci95"]
    assert low < -25 and high > 20  # a resample may draw either seed twice
    fixed_low, fixed_high = paired["ci95_examples"]
    assert -8 < fixed_low < -2.5 < fixed_high < 3  # the seeds held fixed: only the examples' noise
    t_low, t_high = seed_t_interval([25.0, -30.0])  # two seeds: t(1) = 12.7, standard error 27.5
    assert t_low < -300 and t_high > 300


def test_seeds_that_agree_add_little():
    """The same gap on both seeds: resampling seeds changes nothing."""
    a = [{"rte": accuracy_record([True] * 400)}] * 2
    b = [{"rte": accuracy_record([True, False] * 200)}] * 2
    paired = paired_bootstrap(a, b, ["rte"], resamples=2000)
    assert paired["ci95"] == paired["ci95_examples"]
    assert seed_t_interval([50.0, 50.0]) == [50.0, 50.0]


def test_one_seed_each_covers_the_examples_only():
    a, b = [{"rte": accuracy_record([True] * 100)}], [{"rte": accuracy_record([True, False] * 50)}]
    paired = paired_bootstrap(a, b, ["rte"])
    assert not paired["seeds_resampled"] and seed_t_interval([12.5]) is None
    assert paired["ci95"] == paired["ci95_examples"]
