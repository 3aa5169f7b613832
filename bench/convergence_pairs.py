"""Paired differences between systems of one seed of configs/convergence.yaml, on the macro, on
the small targets (rte, mrpc, stsb, cola) and task by task; dev examples resampled (one seed:
the interval covers the examples only).

    .venv/bin/python bench/convergence_pairs.py OUT.json [--seed 0] [--pairs mta_aux:mta_aux_stage1 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alter.experiment.paired import paired_bootstrap
from alter.experiment.results import _kept_predictions  # the runner's own reading of a run's predictions

SMALL = ["rte", "mrpc", "stsb", "cola"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/convergence"))
    parser.add_argument("--pairs", nargs="*", default=["mta_aux:mta_aux_stage1", "mta_aux:mta",
                                                       "mta_aux_stage1:mta_stage1"])
    args = parser.parse_args()
    pairs = [pair.split(":") for pair in args.pairs]
    names = {name for pair in pairs for name in pair}
    runs = {name: {args.seed: json.loads((args.runs / f"seed{args.seed}" / name / "result.json").read_text())}
            for name in names}
    kept = _kept_predictions(runs, args.runs)
    found = {}
    for a, b in pairs:
        first, second = [kept[a][args.seed]], [kept[b][args.seed]]
        tasks = [task for task in first[0] if task in second[0]]
        found[f"{a} - {b}"] = paired_bootstrap(first, second, tasks)
        found[f"{a} - {b} ({', '.join(SMALL)})"] = paired_bootstrap(first, second, [t for t in SMALL if t in tasks])
        for task in tasks:
            found[f"{a} - {b} ({task})"] = paired_bootstrap(first, second, [task])
    for name, paired in found.items():
        print(f"{name}: {paired['macro_diff']:+.2f} [{paired['ci95'][0]:+.2f}, {paired['ci95'][1]:+.2f}]")
    args.out.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
