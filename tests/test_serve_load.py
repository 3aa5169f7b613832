"""bench/serve_load.py's open loop: both schedulers under Poisson arrivals on a tiny model,
the JSON that docs/results/serve-open-loop.json keeps, and when a rate counts as sustained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alter.models.mta_model import MTAModel
from tests.conftest import model_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from open_loop import Outcome, Window, paired_p50_difference  # noqa: E402 - bench/ is scripts, not a package


def test_both_schedulers_run_at_a_fixed_rate_and_report_per_task(registry, tmp_path):
    MTAModel(model_config("tiny-llama"), [registry.get(n) for n in ("sst2", "rte", "dialogsum")]).save(tmp_path / "m")
    out = subprocess.run([sys.executable, str(BENCH / "serve_load.py"), str(tmp_path / "m"), "--rate", "2",
                          "--seconds", "4", "--per-task", "2", "--label-wait-ms", "100", "--json"],
                         capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout)
    assert [run["scheduler"] for run in result["runs"]] == ["static", "continuous", "continuous_wait"]
    for run in result["runs"]:
        assert run["errors"] == 0 and run["answered"] == run["sent"] > 0
        assert set(run["tasks"]) == {"sst2", "rte", "dialogsum"}
        assert all(set(figures) >= {"p50", "p90", "p99"} for figures in run["tasks"].values())
        assert run["streamed"] > 0 and run["ttft_p50"] > 0  # every other summary streams
    (paired,) = result["paired"]  # the same requests under both schedulers, task by task
    assert set(paired["continuous_minus_static"]) == {"sst2", "rte", "dialogsum"}
    assert set(paired["continuous_wait_minus_static"]) == {"sst2", "rte", "dialogsum"}
    assert result["label_wait_ms"] == 100


def window_of(latencies: list[float], seconds: float = 30.0, tasks=("sst2",)) -> Window:
    spacing = seconds / len(latencies)
    return Window(1 / spacing, seconds, [Outcome(tasks[i % len(tasks)], i * spacing, latency, status=200)
                                         for i, latency in enumerate(latencies)])


@pytest.mark.parametrize("latencies,sustained", [
    ([1.0] * 30, True),
    ([1.0 + 0.4 * i for i in range(30)], False),  # every request waits longer: the queue grows
    ([1.0] * 29 + [40.0], False),  # the last answer comes long after the window
])
def test_a_rate_is_sustained_when_the_queue_stays_bounded(latencies, sustained):
    assert window_of(latencies).sustained() is sustained


def test_tasks_of_different_costs_are_compared_with_themselves():
    """Summaries late in the window against labels early in it say nothing of the queue."""
    window = window_of([0.3] * 30)
    for outcome in window.outcomes[10::2]:  # summaries arrive from the second third on
        outcome.task, outcome.latency = "dialogsum", 4.0
    assert window.sustained()


def test_a_failed_request_means_not_sustained():
    window = window_of([1.0] * 30)
    window.outcomes[3].latency, window.outcomes[3].status = None, 503
    assert not window.sustained() and window.summary()["statuses"] == [503]


def test_paired_p50_difference_compares_the_same_requests():
    static = window_of([1.0, 2.0, 3.0, 4.0, 5.0] * 6)
    slower = window_of([1.5, 2.5, 3.5, 4.5, 5.5] * 6)
    difference = paired_p50_difference(static, slower, "sst2")
    assert difference["p50_diff"] == 0.5 and difference["n"] == 30
    assert difference["ci95"][0] <= 0.5 <= difference["ci95"][1]
    assert paired_p50_difference(static, slower, "rte") is None  # no such requests
