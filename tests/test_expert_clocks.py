"""bench/expert_clocks.py on hand-made run logs: a task's own batches at its best check and at
its stop, counted by task clocks where the log holds them and estimated from the stops where it
does not (live tasks share each interval's steps equally)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from expert_clocks import clocks  # noqa: E402


def write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"stage": "stage1", **record}) + "\n" for record in records))
    return path


def test_own_batches_are_estimated_from_the_stops(tmp_path):
    # Two tasks share steps 0-100 (50 each); a stops at 100; b trains alone from 100 to 160.
    log = write_log(tmp_path / "log.jsonl", [
        {"step": 0, "eval_scores": {"a": 0.0, "b": 0.0}},
        {"step": 100, "eval_scores": {"a": 0.5, "b": 0.4}},
        {"step": 100, "stopped_tasks": ["a"]},
        {"step": 160, "eval_scores": {"a": 0.9, "b": 0.6}},  # a's score after its stop does not count
        {"step": 160, "stopped_tasks": ["a", "b"]},
    ])
    found = clocks(log, "stage1")
    assert found["a"] == {"best": 50.0, "best_step": 100, "best_own": 50.0, "stop_step": 100, "stop_own": 50.0}
    assert found["b"] == {"best": 60.0, "best_step": 160, "best_own": 110.0, "stop_step": 160, "stop_own": 110.0}


def test_task_clocks_in_the_log_are_taken_as_they_are(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [
        {"step": 0, "eval_scores": {"a": 0.1, "b": 0.0}, "task_batches": {"a": 0, "b": 0}},
        {"step": 100, "eval_scores": {"a": 0.5, "b": 0.2}, "task_batches": {"a": 80, "b": 20}},
        {"step": 100, "clocks_run_out": ["a"], "stopped_tasks": ["a"]},
    ])
    found = clocks(log, "stage1")
    assert found["a"]["best_own"] == 80 and found["a"]["stop_own"] == 80
    assert found["b"]["best_own"] == 20 and "stop_step" not in found["b"]


def test_a_folder_without_a_log_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "expert_clocks.py"), str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "no run log there" in done.stderr.strip().splitlines()[-1]
