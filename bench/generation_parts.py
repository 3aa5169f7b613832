"""Where generation time goes: the prompt pass and each decoding step, for the mixed batch of
bench/inference.py (16 requests of 4 tasks) and for the same requests task by task.

    .venv/bin/python bench/generation_parts.py [--steps 10] [--cache static] [--json]

Prints, for one batch of 16 and for four batches of 4:
- prefill seconds (the prompt pass that yields the first new token), also for the 16
  prompts sorted by length in 4 batches (what a length-bucketed prefill would cost);
- seconds per decoding step, and the part of it spent in matrix products (torch profiler);
- the generation ratio task by task / mixed for 40 new tokens, from these parts;
- the time a 16-row decoding step would have to take for the mixed batch, its prefill
  length-bucketed, to be `--target` times faster than task by task (issue 4 asks 2.5x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import torch
from inference import NEW_TOKENS, build_model, by_task, generator, requests  # bench/ is the script's folder
from torch.profiler import ProfilerActivity, profile

from alter.data.collate import Encoded

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def seconds(run, rounds: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_seconds(run) -> float:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(event.self_cpu_time_total for event in prof.key_averages() if event.key in MATMUL_OPS) / 1e6


def parts(model, rows: Sequence[Encoded], steps: int, rounds: int, cache: str | None) -> dict[str, float]:
    """Prefill seconds, and seconds and matmul seconds per decoding step, for one batch."""
    first_token, longer = generator(model, rows, 1, cache), generator(model, rows, 1 + steps, cache)
    prefill = seconds(first_token, rounds)
    step = (seconds(longer, rounds) - prefill) / steps
    matmul = (matmul_seconds(longer) - matmul_seconds(first_token)) / steps
    return {"prefill_s": prefill, "step_s": step, "step_matmul_s": matmul}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="decoding steps timed after the first token")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--target", type=float, default=2.5, help="the ratio a step budget is computed for")
    parser.add_argument("--cache", choices=["static"], help="transformers' cache_implementation (default: dynamic)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.backbone)
    rows = requests(model)
    mixed = parts(model, rows, args.steps, args.rounds, args.cache)
    groups = [parts(model, group, args.steps, args.rounds, args.cache) for group in by_task(rows)]
    by_length = sorted(rows, key=lambda row: len(row.input_ids))
    buckets = [generator(model, by_length[i: i + 4], 1, args.cache) for i in range(0, len(rows), 4)]
    bucketed_prefill = seconds(lambda: [run() for run in buckets], args.rounds)
    decode_steps = NEW_TOKENS - 1  # the prefill yields the first token
    task_by_task = sum(g["prefill_s"] for g in groups) + decode_steps * sum(g["step_s"] for g in groups)
    four_row_step = statistics.mean(g["step_s"] for g in groups)
    result = {
        "mixed_16": {k: round(v, 4) for k, v in mixed.items()},
        "task_by_task_4x4": {k: round(sum(g[k] for g in groups), 4) for k in mixed},
        "bucketed_prefill_s": round(bucketed_prefill, 4),
        "step_16_over_4": round(mixed["step_s"] / four_row_step, 3),
        "step_matmul_16_over_4": round(
            mixed["step_matmul_s"] / statistics.mean(g["step_matmul_s"] for g in groups), 3),
        "generation_ratio": round(task_by_task / (mixed["prefill_s"] + decode_steps * mixed["step_s"]), 3),
        "target": args.target,
        "step_16_budget_for_target_s": round((task_by_task / args.target - bucketed_prefill) / decode_steps, 4),
        "step_4_s": round(four_row_step, 4),
        "cache": args.cache or "dynamic", "new_tokens": NEW_TOKENS, "steps_timed": args.steps,
        "backbone": args.backbone, "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(rows)} requests, {args.backbone}, {torch.get_num_threads()} threads; "
          "task_by_task sums its 4 batches")
    print(f"{'way':<18} {'prefill s':>10} {'step s':>8} {'matmul s/step':>14}")
    for name in ("mixed_16", "task_by_task_4x4"):
        part = result[name]
        print(f"{name:<18} {part['prefill_s']:>10.3f} {part['step_s']:>8.3f} {part['step_matmul_s']:>14.3f}")
    print(f"length-bucketed prefill of the 16: {bucketed_prefill:.3f} s")
    print(f"a 16-row step costs {result['step_16_over_4']}x a 4-row step (its matrix products "
          f"{result['step_matmul_16_over_4']}x); generation ratio {result['generation_ratio']}x; for "
          f"{args.target}x with a length-bucketed prefill a 16-row step may take "
          f"{result['step_16_budget_for_target_s']:.3f} s (a 4-row step: {four_row_step:.3f} s)")


if __name__ == "__main__":
    main()
