"""Paired differences between systems of configs/convergence.yaml over the seeds both ran, on
the macro, on the small targets (rte, mrpc, stsb, cola) and task by task; seeds and dev examples
resampled (with one seed the interval covers the examples only).

    .venv/bin/python bench/convergence_pairs.py OUT.json [--seeds 0 1 2] [--pairs mta_aux:mta_aux_stage1 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convergence_table import SMALL  # the issue's small targets, named once (bench/ is this script's folder)

from alter.experiment.paired import paired_bootstrap
from alter.experiment.results import kept_predictions  # the runner's own reading of a run's predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/convergence"))
    parser.add_argument("--pairs", nargs="*", default=["mta_aux:mta_aux_stage1", "mta_aux:mta",
                                                       "mta_aux_stage1:mta_stage1"])
    args = parser.parse_args()
    pairs = [pair.split(":") for pair in args.pairs]
    if malformed := [text for text, pair in zip(args.pairs, pairs) if len(pair) != 2 or not all(pair)]:
        parser.error(f"--pairs: {malformed[0]!r} is not SYSTEM_A:SYSTEM_B")
    names = {name for pair in pairs for name in pair}
    runs = {name: {seed: json.loads(path.read_text()) for seed in args.seeds
                   if (path := args.runs / f"seed{seed}" / name / "result.json").exists()} for name in names}
    kept = kept_predictions(runs, args.runs)
    found = {}
    for a, b in pairs:
        seeds = [seed for seed in args.seeds if seed in kept.get(a, {}) and seed in kept.get(b, {})]
        if not seeds:
            parser.error(f"{a} and {b} share none of the seeds {args.seeds} (with predictions) under {args.runs}")
        first, second = [kept[a][seed] for seed in seeds], [kept[b][seed] for seed in seeds]
        tasks = [task for task in first[0] if task in second[0]]
        small = [task for task in SMALL if task in tasks]
        for label, chosen in [("", tasks), (f" ({', '.join(small)})", small), *[(f" ({t})", [t]) for t in tasks]]:
            found[f"{a} - {b}{label}"] = {**paired_bootstrap(first, second, chosen), "seeds": seeds}
    for name, paired in found.items():
        print(f"{name}: {paired['macro_diff']:+.2f} [{paired['ci95'][0]:+.2f}, {paired['ci95'][1]:+.2f}]")
    args.out.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
