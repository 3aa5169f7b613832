"""How many of its own batches each task had trained when its validation score peaked and when
it stopped, in runs with per-task early stopping (docs/results.md, "Why MTA's experts trail
single-task LoRAs"). A run on task clocks logs each task's batches at every check; for an
older run they are estimated from its stops: the live tasks share the steps between two checks
equally (one task per batch, uniform rates over the tasks not yet stopped). A one-task run's
own batches are its steps.

    .venv/bin/python bench/expert_clocks.py RUN_DIR [RUN_DIR ...] [--stage stage1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def clocks(log: Path, stage: str) -> dict[str, dict[str, float]]:
    """{task: {"best": validation score (0-100), "best_step", "best_own", "stop_step", "stop_own"}}."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records = [record for record in records if record.get("stage") == stage]
    tasks: dict[str, dict[str, float]] = {}
    stopped: list[str] = []
    own: dict[str, float] = {}
    last_step = 0
    for record in records:
        if "eval_scores" in record:
            step, live = record["step"], [task for task in record["eval_scores"] if task not in stopped]
            if "task_batches" in record:
                own.update(record["task_batches"])
            else:
                for task in live:
                    own[task] = own.get(task, 0.0) + (step - last_step) / len(live)
            last_step = step
            for task in live:
                score = 100.0 * record["eval_scores"][task]
                if score > tasks.get(task, {}).get("best", float("-inf")):
                    tasks[task] = {"best": score, "best_step": step, "best_own": own.get(task, 0.0)}
        # a task stops on its own, or with the whole stage (whole-model stopping's last line)
        ending = record.get("stopped_tasks", []) + (list(tasks) if record.get("early_stopped") else [])
        for task in ending:
            if task not in stopped:
                stopped.append(task)
                tasks[task].update(stop_step=record["step"], stop_own=own.get(task, 0.0))
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--stage", default="stage1")
    args = parser.parse_args()
    for run in args.runs:
        log = run / "log.jsonl"
        if not log.exists():
            parser.error(f"{log}: no run log there")
        found = clocks(log, args.stage)
        if not found:  # a one-task run trains in one joint stage
            found = clocks(log, "joint")
        if not found:
            parser.error(f"{log}: no validation checks in stage '{args.stage}' (or 'joint')")
        print(f"{run}")
        print(f"  {'task':6} {'best':>6} {'at step':>8} {'own':>6} {'stopped':>8} {'own':>6}")
        for task, row in found.items():
            stop = (f"{row['stop_step']:8d} {row['stop_own']:6.0f}" if "stop_step" in row else f"{'-':>8} {'-':>6}")
            print(f"  {task:6} {row['best']:6.1f} {row['best_step']:8d} {row['best_own']:6.0f} {stop}")


if __name__ == "__main__":
    main()
