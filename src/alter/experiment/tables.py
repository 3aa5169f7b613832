"""The experiment's numbers as a reader sees them: `results.md` (a table of every system x task
with the paired intervals, stage 2's gain) and plots (loss convergence, MTA gates)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from alter.evaluate.trivial import not_clearly_learned  # noqa: E402
from alter.experiment.config import ExperimentConfig  # noqa: E402
from alter.experiment.paired import excludes_zero  # noqa: E402


def write_tables(config: ExperimentConfig, out: Path, runs: dict[str, dict[int, dict]],
                 results: dict[str, Any]) -> None:
    """`results.md` and its plots in `out`, from `results` (`write_results`) and the runs."""
    plots = _plots(config, out, runs)
    (out / "results.md").write_text(markdown(results, plots))


def format_difference(paired: dict[str, Any] | None, significant: str = "**{}**") -> str:
    """`+1.2 [+0.3, +2.1]`, written as `significant` says (Markdown bold by default) where the
    interval excludes zero."""
    if paired is None:
        return "–"
    low, high = paired["ci95"]
    text = f"{paired['macro_diff']:+.1f} [{low:+.1f}, {high:+.1f}]"
    text = significant.format(text) if excludes_zero(paired) else text
    seeds = paired.get("seeds")  # compared on the seeds both systems ran
    return text + (f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if seeds else "")


def _legend(reference: str, trivial: dict[str, dict]) -> str:
    """What the table's columns and marks mean."""
    return ("Scores on a 0-100 scale: mean over each system's seeds (± standard deviation when it has "
            "several); after each task, its main metric and number of evaluation examples. Macro: the mean "
            "of each task's main metric over the tasks a system has; validation macro: the same on the examples "
            "held out of the training splits (what settings are compared by). "
            f"`{reference} − system`: {reference}'s macro minus the system's on the tasks and seeds both have, "
            "with a 95% paired bootstrap interval that resamples the seeds (seed by seed for both) and then "
            "the evaluation examples (the same for both), so that it carries the seeds' spread; with one seed "
            "it covers the examples only; **bold** where the interval excludes zero. The t-interval over seeds: "
            "a paired t-interval of the per-seed macro differences (two or more seeds)."
            + (" † marks a score not clearly learned: the lower end of its 95% interval (seeds and examples "
               "resampled) is not above the task's trivial score (the last row: "
               + ", ".join(sorted({t["rule"].split(":")[0] for t in trivial.values()})) + ", on the same examples)."
               if trivial else ""))


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    systems = results["systems"]
    reference = results["reference"]
    trivial = results.get("trivial", {})
    tasks = list(dict.fromkeys(task for result in systems.values() for task in result["tasks"]))
    examples = {task: count for result in systems.values() for task, count in result.get("eval_examples", {}).items()}

    def cell(result: dict, task: str) -> str:
        if task not in result["tasks"]:
            return "–"
        metric = result["main_metrics"][task]
        mean = result["tasks"][task][metric]
        value = f"{mean:.1f}" + (f" ± {result['tasks_std'][task][metric]:.1f}" if len(result["seeds"]) > 1 else "")
        floor = trivial.get(task, {}).get("metrics", {}).get(metric)
        return value + (" †" if not_clearly_learned(mean, result.get("tasks_ci95", {}).get(task), floor) else "")

    header = ["system", "seeds", *(f"{task} ({results['main_metrics'][task]}, {examples.get(task, '?')})"
                                   for task in tasks), "macro"]
    if results["classification_tasks"]:
        header.append("macro (classification)")
    validated = any("validation_macro" in result for result in systems.values())
    if validated:
        header.append("validation macro")
    header.append(f"{reference} − system [95% CI]")
    seed_intervals = any(f"seeds_vs_{reference}" in result for result in systems.values())
    if seed_intervals:
        header.append("t-interval over seeds")
    header += ["trainable params", "train (s)", "eval (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in systems.items():
        several = len(result["seeds"]) > 1
        macro = f"{result['macro']:.1f}" + (f" ± {result['macro_std']:.1f}" if several else "")
        cells = [name, str(len(result["seeds"])), *(cell(result, task) for task in tasks), macro]
        if results["classification_tasks"]:
            cells.append(f"{result['macro_classification']:.1f}" if "macro_classification" in result else "–")
        if validated:
            cells.append(f"{result['validation_macro']:.1f}" if "validation_macro" in result else "–")
        paired = result.get(f"paired_vs_{reference}")
        cells.append(format_difference(paired))
        if seed_intervals:
            interval = result.get(f"seeds_vs_{reference}", {}).get("t95")
            cells.append(f"[{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "–")
        cells += [f"{result['trainable_params']:,}", f"{result['train_seconds']:.0f}",
                  f"{result.get('eval_seconds', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if trivial:
        floors = [f"{trivial[task]['metrics'][results['main_metrics'][task]]:.1f}" if task in trivial else "–"
                  for task in tasks]
        lines.append("| trivial | – | " + " | ".join(floors) + " |" + " |" * (len(header) - 2 - len(tasks)))
    text = ["# Results", "", _legend(reference, trivial), "", *lines, ""]
    gain = results.get("stage2_gain")
    if gain:
        text += [f"Stage 2's gain ({gain['of']} minus {gain['after']}): {format_difference(gain)} macro points.", ""]
    variants = [result["gain_over_start"] for result in results["systems"].values() if "gain_over_start" in result]
    if variants:
        text += ["Gains of the systems that start from another's checkpoint, over that checkpoint scored alone:", "",
                 *[f"- {gain['of']} minus {gain['after']}: {format_difference(gain)}" for gain in variants], ""]
    text += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(text) + "\n"


def _plots(config: ExperimentConfig, out: Path, runs: dict[str, dict[int, dict]]) -> dict[str, str]:
    plots: dict[str, str] = {}
    if _plot_convergence(out, runs, out / "loss_convergence.png"):
        plots["loss convergence"] = "loss_convergence.png"
    for name, seeds in runs.items():
        seed = min(seeds)
        gates = seeds[seed].get("gates")
        if gates and (out / f"seed{seed}" / name / gates).exists():
            shutil.copyfile(out / f"seed{seed}" / name / gates, out / f"gates_{name}.png")
            plots[f"{name} gates"] = f"gates_{name}.png"
    return plots


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _task_curves(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Training loss of each task against the share of training done (0-1), over all stages."""
    records = [record for record in records if "task_loss" in record]
    ends: dict[str, int] = {}
    for record in records:
        ends[record["stage"]] = max(ends.get(record["stage"], 0), record["step"])
    offsets, total = {}, 0
    for stage, end in ends.items():
        offsets[stage], total = total, total + end
    curves: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        position = (offsets[record["stage"]] + record["step"]) / max(total, 1)
        for task, loss in record["task_loss"].items():
            curves.setdefault(task, []).append((position, loss))
    return curves


def _seed_band(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Positions logged by every seed, with the mean, lowest and highest loss there."""
    common = sorted(set.intersection(*({x for x, _ in curve} for curve in curves)))
    values = [[dict(curve)[x] for curve in curves] for x in common]
    return common, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _plot_convergence(out: Path, runs: dict[str, dict[int, dict]], target: Path) -> bool:
    """One panel per task: every system's training loss on that task, the mean over its seeds
    with a band from the lowest to the highest seed."""
    curves: dict[str, dict[str, list[list[tuple[float, float]]]]] = {}  # task -> system -> one curve per seed
    for name, seeds in runs.items():
        for seed, result in seeds.items():
            logs = result.get("log")
            if not logs or "from" in result:
                continue
            for log in logs.values() if isinstance(logs, dict) else [logs]:
                for task, points in _task_curves(_read_log(out / f"seed{seed}" / name / log)).items():
                    curves.setdefault(task, {}).setdefault(name, []).append(points)
    if not curves:
        return False
    # One colour per system in every panel (a panel's own colour cycle would give a system
    # that lacks a task, such as the encoder on dialogsum, a different colour from panel to panel).
    colours = {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(runs)}
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False, layout="constrained")
    for axis, (task, systems) in zip(axes.flat, sorted(curves.items())):
        for name, seed_curves in systems.items():
            x, mean, low, high = _seed_band(seed_curves)
            axis.plot(x, mean, color=colours[name], linewidth=1.2)
            if len(seed_curves) > 1:
                axis.fill_between(x, low, high, color=colours[name], alpha=0.2, linewidth=0)
        axis.set(title=task, xlabel="share of training", ylabel="training loss")
        axis.set_yscale("log")
    for axis in axes.flat[len(curves):]:
        axis.set_visible(False)
    shown = [name for name in runs if any(name in systems for systems in curves.values())]
    handles = [plt.Line2D([], [], color=colours[name], linewidth=1.2) for name in shown]
    figure.legend(handles, shown, loc="outside right center", fontsize=8)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return True
