"""The experiment's table: every system x task, macro averages, mean and spread over seeds,
parameters and training time; JSON, Markdown and plots (loss convergence, MTA gates)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from alter.experiment.config import ExperimentConfig  # noqa: E402

RESULTS_FILE = "results.json"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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
    return {
        "macro": round(macro, 2), "macro_std": round(macro_std, 2),
        "train_seconds": round(seconds, 1), "trainable_params": first["trainable_params"],
        "tasks": tasks, "tasks_std": spread, "seeds": sorted(runs),
        "main_metrics": {task: main_metrics[task] for task in tasks},
    }


def write_results(config: ExperimentConfig, out: Path) -> dict[str, Any]:
    """Read every finished system's result of every seed; write the table and plots."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name in config.systems:
        for seed in config.seeds:
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
    results = {"scale": "0-100", "seeds": config.seeds, "main_metrics": main_metrics,
               "classification_tasks": common, "systems": systems}
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    plots = _plots(config, out, runs)
    (out / "results.md").write_text(markdown(results, plots))
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


def _classification_tasks(systems: dict[str, dict], main_metrics: dict[str, str]) -> list[str]:
    """Tasks scored by a label or a number (not ROUGE), when there are summaries too: a
    like-for-like average for the systems that cannot summarise."""
    tasks = {task for result in systems.values() for task in result["tasks"]}
    scored = sorted(task for task in tasks if not main_metrics[task].startswith("rouge"))
    return scored if len(scored) < len(tasks) else []


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    systems = results["systems"]
    tasks = list(dict.fromkeys(task for result in systems.values() for task in result["tasks"]))
    several = len(results["seeds"]) > 1

    def cell(result: dict, task: str) -> str:
        if task not in result["tasks"]:
            return "–"
        metric = result["main_metrics"][task]
        value = f"{result['tasks'][task][metric]:.1f}"
        return value + (f" ± {result['tasks_std'][task][metric]:.1f}" if several else "")

    header = ["system", *(f"{task} ({results['main_metrics'][task]})" for task in tasks), "macro"]
    if results["classification_tasks"]:
        header.append("macro (classification)")
    header += ["trainable params", "train time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in systems.items():
        macro = f"{result['macro']:.1f}" + (f" ± {result['macro_std']:.1f}" if several else "")
        cells = [name, *(cell(result, task) for task in tasks), macro]
        if results["classification_tasks"]:
            cells.append(f"{result['macro_classification']:.1f}" if "macro_classification" in result else "–")
        cells += [f"{result['trainable_params']:,}", f"{result['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(str(seed) for seed in results["seeds"])
    text = ["# Results", "", f"Scores on a 0-100 scale, mean over seeds {seeds}"
            + (" (± standard deviation)" if several else "") + ". Macro: the mean of each task's main metric "
            "over the tasks a system has.", "", *lines, ""]
    text += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(text) + "\n"


def _plots(config: ExperimentConfig, out: Path, runs: dict[str, dict[int, dict]]) -> dict[str, str]:
    plots: dict[str, str] = {}
    seed = config.seeds[0]
    if _plot_convergence(out, seed, runs, out / "loss_convergence.png"):
        plots["loss convergence"] = "loss_convergence.png"
    for name, seeds in runs.items():
        gates = seeds.get(seed, {}).get("gates")
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


def _plot_convergence(out: Path, seed: int, runs: dict[str, dict[int, dict]], target: Path) -> bool:
    """One panel per task: every system's training loss on that task."""
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}  # task -> system -> points
    for name, seeds in runs.items():
        logs = seeds.get(seed, {}).get("log")
        if not logs or "from" in seeds[seed]:
            continue
        for log in logs.values() if isinstance(logs, dict) else [logs]:
            for task, points in _task_curves(_read_log(out / f"seed{seed}" / name / log)).items():
                curves.setdefault(task, {})[name] = points
    if not curves:
        return False
    # One colour per system in every panel (a panel's own colour cycle would give a system
    # that lacks a task, such as the encoder on dialogsum, a different colour from panel to panel).
    colours = {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(runs)}
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False, layout="constrained")
    for axis, (task, systems) in zip(axes.flat, sorted(curves.items())):
        for name, points in systems.items():
            axis.plot(*zip(*points), color=colours[name], linewidth=1.2)
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
