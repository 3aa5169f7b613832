"""The experiment's numbers: every system x task, macro averages, mean and spread over seeds,
paired intervals against the reference, parameters and training time (`results.json`);
`alter.experiment.tables` writes them as Markdown with plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from alter.evaluate.predictions import read_predictions
from alter.evaluate.resampling import score_interval
from alter.evaluate.trivial import not_clearly_learned
from alter.experiment.config import ExperimentConfig
from alter.experiment.paired import paired_bootstrap, seed_t_interval
from alter.experiment.tables import write_tables

RESULTS_FILE = "results.json"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _predictions(run_dir: Path, result: dict[str, Any]) -> dict[str, dict] | None:
    """A run's per-example predictions {task: record}, or None for a run that kept none."""
    paths = result.get("predictions")
    if paths is None:
        return None
    named = paths if isinstance(paths, dict) else {None: paths}
    records: dict[str, dict] = {}
    for task, path in named.items():
        if not (run_dir / path).exists():
            return None
        found = read_predictions(run_dir / path)
        records.update(found if task is None else {task: found[task]})
    return records


Kept = dict[str, dict[int, dict]]  # system -> seed -> its per-example predictions per task


def kept_predictions(runs: dict[str, dict[int, dict[str, Any]]], out: Path) -> Kept:
    """Every system's per-example predictions by seed (systems that kept them on all seeds)."""
    kept = {name: {seed: _predictions(out / f"seed{seed}" / name, result) for seed, result in seeds.items()}
            for name, seeds in runs.items()}
    return {name: records for name, records in kept.items()
            if records and all(r is not None for r in records.values())}


def _paired_between(kept: Kept, a: str, b: str, seeds: list[int] | None = None) -> dict[str, Any] | None:
    """A's macro minus B's on the tasks both have, over the seeds both ran, seed by seed
    (`seeds`: those only); None without predictions or when one of them lacks one of `seeds`."""
    if a not in kept or b not in kept:
        return None
    shared = sorted(kept[a].keys() & kept[b].keys())
    if seeds is not None and not set(seeds) <= set(shared):
        return None
    chosen = sorted(seeds) if seeds is not None else shared
    if not chosen:
        return None
    runs_a, runs_b = [kept[a][seed] for seed in chosen], [kept[b][seed] for seed in chosen]
    tasks = [task for task in runs_a[0] if all(task in run for run in runs_b)]
    if not tasks:
        return None
    partial = chosen != sorted(kept[a]) or chosen != sorted(kept[b])
    return {**paired_bootstrap(runs_a, runs_b, tasks), **({"seeds": chosen} if partial else {})}


def _paired(kept: Kept, reference: str) -> dict[str, dict]:
    """Every system's paired bootstrap against the reference system, on the tasks and seeds
    both have (the mean of three seeds against one seed would mix the seeds' spread into the
    difference)."""
    paired = {}
    for name in kept:
        if name == reference or reference not in kept:
            continue
        result = _paired_between(kept, reference, name)
        if result is not None:
            paired[name] = result
    return paired


def _seed_differences(runs: dict[str, dict[int, dict[str, Any]]], main_metrics: dict[str, str],
                      reference: str) -> dict[str, dict]:
    """Every system against the reference on the seeds and tasks both have, from each seed's
    scores: the per-seed macro differences and their 95% t-interval (two or more seeds)."""
    found = {}
    for name, seeds in runs.items():
        shared = sorted(seeds.keys() & runs.get(reference, {}).keys())
        if name == reference or len(shared) < 2:
            continue
        tasks = [task for task in runs[reference][shared[0]]["tasks"] if task in seeds[shared[0]]["tasks"]]

        def macro(result: dict) -> float:
            return 100.0 * statistics.fmean(result["tasks"][task][main_metrics[task]] for task in tasks)

        differences = [round(macro(runs[reference][seed]) - macro(seeds[seed]), 2) for seed in shared]
        found[name] = {"seeds": shared, "tasks": tasks, "per_seed_diff": differences,
                       "t95": seed_t_interval(differences)}
    return found


def _gains_over_start(config: ExperimentConfig, kept: Kept) -> dict[str, dict]:
    """For a system that starts from another's checkpoint (a stage-2 variant, a calibration):
    its macro minus that checkpoint scored alone, on the variant's seeds, as `stage2_gain` is
    for the reference. The checkpoint scored alone is the `after_stage` system of that stage,
    or the other system itself when the checkpoint is its last stage."""
    gains = {}
    for name, system in config.systems.items():
        start = system.starts_from
        if start is None or name not in kept:
            continue
        scored_alone = [other for other, candidate in config.systems.items()
                        if candidate.kind == "after_stage" and (candidate.of, candidate.stage) == (start.system,
                                                                                                   start.stage)]
        seed = sorted(kept[name])[0]
        if config.train_config(start.system, seed, Path(".")).stages[-1].label == start.stage:
            scored_alone.append(start.system)
        for other in scored_alone:
            gain = _paired_between(kept, name, other, seeds=sorted(kept[name]))
            if gain is not None:
                gains[name] = {"of": name, "after": other, "seeds": sorted(kept[name]), **gain}
    return gains


def aggregate(runs: dict[int, dict[str, Any]], main_metrics: dict[str, str]) -> dict[str, Any]:
    """One system's results over seeds -> means (metrics on 0-100) and standard deviations."""
    first = next(iter(runs.values()))
    tasks: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, float]] = {}
    for task, metrics in first["tasks"].items():
        tasks[task], spread[task] = {}, {}
        for metric in metrics:
            mean, std = _mean_std([100.0 * run["tasks"][task][metric] for run in runs.values()])
            tasks[task][metric], spread[task][metric] = round(mean, 2), round(std, 2)
    macro, macro_std = _mean_std([run["macro"] for run in runs.values()])
    seconds, _ = _mean_std([run["train_seconds"] for run in runs.values()])
    eval_seconds, _ = _mean_std([run.get("eval_seconds", 0.0) for run in runs.values()])
    validation = [run["validation_macro"] for run in runs.values() if "validation_macro" in run]
    return {
        "macro": round(macro, 2), "macro_std": round(macro_std, 2),
        **({"validation_macro": round(statistics.fmean(validation), 2)} if len(validation) == len(runs) else {}),
        "train_seconds": round(seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "trainable_params": first["trainable_params"], "eval_examples": first.get("eval_examples", {}),
        "tasks": tasks, "tasks_std": spread, "seeds": sorted(runs),
        "main_metrics": {task: main_metrics[task] for task in tasks},
    }


def write_results(config: ExperimentConfig, out: Path) -> dict[str, Any]:
    """Read every finished system's result of every seed; write the table and plots."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name in config.systems:
        for seed in config.system_seeds(name):
            path = out / f"seed{seed}" / name / "result.json"
            if path.exists():
                runs.setdefault(name, {})[seed] = json.loads(path.read_text())
    main_metrics = _main_metrics(config, out, runs)
    systems = {name: aggregate(seeds, main_metrics) for name, seeds in runs.items()}
    common = _classification_tasks(systems, main_metrics)
    for result in systems.values():
        if common and all(task in result["tasks"] for task in common):
            scores = [result["tasks"][task][result["main_metrics"][task]] for task in common]
            result["macro_classification"] = round(statistics.fmean(scores), 2)
    kept = kept_predictions(runs, out)
    for reference in config.references:
        for name, paired in _paired(kept, reference).items():
            systems[name][f"paired_vs_{reference}"] = paired
        for name, differences in _seed_differences(runs, main_metrics, reference).items():
            systems[name][f"seeds_vs_{reference}"] = differences
    reference = config.references[0]  # heads the tables; its stage 1 gives stage2_gain
    for name, gain in _gains_over_start(config, kept).items():
        systems[name]["gain_over_start"] = gain
    for name, intervals in _task_intervals(kept).items():
        systems[name]["tasks_ci95"] = intervals
    results = {"scale": "0-100", "seeds": config.seeds, "main_metrics": main_metrics,
               "classification_tasks": common, "reference": reference, "references": config.references,
               "trivial": _trivial(out), "systems": systems}
    floors = [name for name, system in config.systems.items() if system.kind == "lead"]  # trivial by design
    results["shortfalls"] = below_trivial({name: result for name, result in systems.items() if name not in floors},
                                       results["trivial"])
    stage2 = [name for name, system in config.systems.items()
              if system.kind == "after_stage" and system.of == reference and name in systems]
    if stage2 and f"paired_vs_{reference}" in systems[stage2[0]]:
        results["stage2_gain"] = {"of": reference, "after": stage2[0], **systems[stage2[0]][f"paired_vs_{reference}"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    write_tables(config, out, runs, results)
    return results


def _main_metrics(config: ExperimentConfig, out: Path, runs: dict[str, dict[int, dict]]) -> dict[str, str]:
    """Each task's main metric, as the training reports recorded it."""
    found: dict[str, str] = {}
    for path in sorted(out.glob("seed*/**/report.json")):
        found.update(json.loads(path.read_text()).get("main_metrics", {}))
    for seeds in runs.values():  # lead only: ROUGE-L
        for run in seeds.values():
            for task, metrics in run["tasks"].items():
                found.setdefault(task, "rougeL" if "rougeL" in metrics else next(iter(metrics)))
    return found


def _trivial(out: Path) -> dict[str, dict]:
    """Each task's trivial score (0-100) on the evaluation examples, as the training reports
    recorded it: {task: {"metrics": {...}, "rule": ...}}."""
    found: dict[str, dict] = {}
    for path in sorted(out.glob("seed*/**/report.json")):
        for task, trivial in json.loads(path.read_text()).get("trivial", {}).items():
            if all(math.isfinite(value) for value in trivial["metrics"].values()):  # runs before a NaN fix
                found.setdefault(task, {"metrics": {k: round(100 * v, 2) for k, v in trivial["metrics"].items()},
                                        "rule": trivial["rule"]})
    return found


def _task_intervals(kept: Kept) -> dict[str, dict[str, list[float]]]:
    """Each system's mean main score of each task over its seeds, with the 95% interval of a
    bootstrap over seeds and examples (`score_interval`), 0-100."""
    found = {}
    for name, seeds in kept.items():
        runs = list(seeds.values())
        found[name] = {task: [round(100 * end, 2) for end in score_interval([run[task] for run in runs])]
                       for task in runs[0] if all(task in run for run in runs)}
    return found


def below_trivial(systems: dict[str, dict], trivial: dict[str, dict]) -> list[str]:
    """A line for each system x task that is not clearly learned (`not_clearly_learned`)."""
    lines = []
    for name, result in systems.items():
        for task, metrics in result["tasks"].items():
            metric = result["main_metrics"][task]
            floor = trivial.get(task, {}).get("metrics", {}).get(metric)
            interval = result.get("tasks_ci95", {}).get(task)
            if not_clearly_learned(metrics[metric], interval, floor):
                shown = f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else ""
                lines.append(f"{name} on {task}: {metric} {metrics[metric]:.1f}{shown} is not clearly learned: "
                             f"trivial {floor:.1f} ({trivial[task]['rule']})")
    return lines


def _classification_tasks(systems: dict[str, dict], main_metrics: dict[str, str]) -> list[str]:
    """Tasks scored by a label or a number (not ROUGE), when there are summaries too: a
    like-for-like average for the systems that cannot summarise."""
    tasks = {task for result in systems.values() for task in result["tasks"]}
    scored = sorted(task for task in tasks if not main_metrics[task].startswith("rouge"))
    return scored if len(scored) < len(tasks) else []
