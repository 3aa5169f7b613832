"""The encoder track's lead table (docs/results.md), printed from convergence.json so that its
cells are the results' own: each task's main metric (stsb in Spearman), the macro as mean ± std
over the system's seeds, the small targets' mean, training seconds, and † on every cell not
clearly above its trivial score (the runner's own rule, `not_clearly_learned`, as in its
results.md and `shortfalls`).

    .venv/bin/python bench/convergence_table.py docs/results/convergence.json \
        "mta_aux=MTA two stages (\\`mta_aux\\`)" multi_lora_aux_learned ... [--not-cost adapterfusion_aux]

A system is named by its key, or KEY=LABEL to print LABEL in the first column.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from alter.evaluate.trivial import not_clearly_learned

SMALL = ["rte", "mrpc", "stsb", "cola"]  # the small target tasks (issue 26), as convergence_pairs.py reports them


def seed_text(seeds: list[int]) -> str:
    """0-4 for three or more consecutive seeds, else the seeds one by one."""
    consecutive = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive else ", ".join(map(str, seeds))


def row(label: str, system: dict, main: dict[str, str], trivial: dict[str, dict], not_cost: bool) -> str:
    scores = {task: system["tasks"][task][metric] for task, metric in main.items()}
    floors = {task: trivial.get(task, {}).get("metrics", {}).get(metric) for task, metric in main.items()}
    intervals = system.get("tasks_ci95", {})
    cells = [f"{score:.1f}" + (" †" if not_clearly_learned(score, intervals.get(task), floors[task]) else "")
             for task, score in scores.items()]
    # The std with both of the results' decimals: rounding it again could move it (0.547 is stored as 0.55).
    spread = f" ± {system['macro_std']:.2f}" if len(system["seeds"]) > 1 else ""
    small = statistics.mean(scores[task] for task in SMALL if task in scores)
    cost = "not a cost figure ‡" if not_cost else f"{system['train_seconds']:,.0f}"
    return markdown_row([label, seed_text(system["seeds"]), *cells, f"{system['macro']:.1f}{spread}",
                         f"{small:.1f}", cost])


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("systems", nargs="+", help="KEY or KEY=LABEL")
    parser.add_argument("--not-cost", nargs="*", default=[], help="systems whose seconds are no cost figure")
    args = parser.parse_args()
    if not args.results.is_file():
        parser.error(f"no results file at {args.results}")
    results = json.loads(args.results.read_text())
    main_metrics = results["main_metrics"]
    named = [entry.partition("=") for entry in args.systems]
    if missing := [key for key, _, _ in named if key not in results["systems"]]:
        parser.error(f"{args.results} has no system {missing[0]!r}")
    print(markdown_row(["system", "seeds", *(f"{task} ({metric})" for task, metric in main_metrics.items()),
                        "macro", "small targets", "train (s)"]))
    print("|---" * (len(main_metrics) + 5) + "|")
    for key, _, label in named:
        print(row(label or f"`{key}`", results["systems"][key], main_metrics, results["trivial"], key in args.not_cost))
    trivial = [f"{results['trivial'][task]['metrics'][metric]:.1f}" for task, metric in main_metrics.items()]
    print(markdown_row(["trivial", "", *trivial, "", "", ""]))


if __name__ == "__main__":
    main()
