"""Reports: JSON and Markdown tables of every task and the macro average; PNG plots of the
training loss per task and of the learned gate weights (task x expert) of each MTA layer."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from alter.evaluate.evaluator import macro_average  # noqa: E402
from alter.evaluate.trivial import shortfalls  # noqa: E402
from alter.models.contract import TrainableModel  # noqa: E402


def markdown_table(tasks: Sequence, after: dict, before: dict | None, trivial: dict | None = None) -> str:
    """Every task's metrics: untrained (if scored), trivial (majority label, training mean or
    lead sentences, on the same examples) and trained."""
    trivial = trivial or {}
    columns = ["task", "metric", *(["untrained"] if before else []), *(["trivial"] if trivial else []), "trained"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    tasks = [task for task in tasks if task.name in after]  # auxiliary tasks are not scored
    for task in tasks:
        for metric, value in after[task.name].items():
            mark = " (main)" if metric == task.main_metric else ""
            cells = [task.name, metric + mark]
            if before:
                cells.append(f"{100 * before[task.name][metric]:.1f}")
            if trivial:
                floor = trivial.get(task.name, {}).get("metrics", {}).get(metric)
                cells.append("–" if floor is None else f"{100 * floor:.1f}")
            cells.append(f"{100 * value:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    macro = [f"{macro_average(tasks, before):.1f}"] if before else []
    if trivial:
        macro.append(f"{macro_average(tasks, {name: t['metrics'] for name, t in trivial.items()}):.1f}")
    lines.append("| **macro** | main metrics | " + " | ".join([*macro, f"{macro_average(tasks, after):.1f}"]) + " |")
    return "\n".join(lines)


def plot_losses(log_path: Path, target: Path) -> bool:
    if not log_path.exists():
        return False
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    records = [r for r in records if "task_loss" in r]
    if not records:
        return False
    figure, axis = plt.subplots(figsize=(8, 4.5))
    offsets, offset, stage_of = {}, 0, None
    for record in records:  # steps continue across stages on one axis
        if record["stage"] != stage_of:
            stage_of = record["stage"]
            offsets[stage_of] = offset
        offset = offsets[stage_of] + record["step"]
    for name in sorted({n for r in records for n in r["task_loss"]}):
        points = [(offsets[r["stage"]] + r["step"], r["task_loss"][name]) for r in records if name in r["task_loss"]]
        axis.plot(*zip(*points), label=name)
    for stage, start in offsets.items():
        axis.axvline(start, color="grey", linewidth=0.5)
        axis.text(start, axis.get_ylim()[1], f" {stage}", va="top", fontsize=8, color="grey")
    axis.set(xlabel="step", ylabel="training loss", title="Training loss per task")
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return True


def plot_gates(weights, task_names: Sequence[str], layer_names: Sequence[str], target: Path,
               start=None) -> bool:
    """weights (L, tasks, K): one small heatmap per MTA layer. With `start` (tasks, K), the
    stage-1 weights of residual gates, what was learned on top of them is drawn, on a colour
    scale centred on 0."""
    if weights.numel() == 0:
        return False
    title, scale = "Gate weights: task (rows) x expert (columns)", {"vmin": 0, "vmax": 1, "cmap": "viridis"}
    if start is not None:
        weights = weights - start
        largest = max(float(weights.abs().max()), 1e-6)
        title = "Learned gate weights added to the stage-1 assignment: task (rows) x expert (columns)"
        scale = {"vmin": -largest, "vmax": largest, "cmap": "RdBu_r"}
    layers = weights.shape[0]
    columns = min(6, layers)
    rows = math.ceil(layers / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 0.4 * len(task_names) * rows + 1.2 * rows),
                                squeeze=False, layout="constrained")  # leaves room for the title and colour bar
    for index, axis in enumerate(axes.flat):
        if index >= layers:
            axis.axis("off")
            continue
        image = axis.imshow(weights[index].numpy(), aspect="auto", **scale)
        axis.set_title(layer_names[index], fontsize=8)
        axis.set_yticks(range(len(task_names)), task_names if index % columns == 0 else [], fontsize=7)
        axis.set_xticks(range(weights.shape[2]), [str(k) for k in range(weights.shape[2])], fontsize=6)
    figure.suptitle(title)
    figure.colorbar(image, ax=axes, shrink=0.5, label="gate weight")
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return True


def inputs_cut_text(cut: dict[str, dict[str, list[int]]]) -> str:
    """`rte: 59 of 1000 training inputs, 4 of 100 scored ones; dialogsum: ...`"""
    names = {"train": "training inputs", "eval": "scored ones"}
    return "; ".join(f"{task}: " + ", ".join(f"{shortened} of {total} {names.get(split, split)}"
                                            for split, (shortened, total) in splits.items())
                     for task, splits in cut.items())


def build_report(model: TrainableModel, final: dict, before: dict | None, stages: Sequence, eval_counts: dict[str, int],
                 after_stage: dict[str, dict] | None = None, eval_seconds: dict[str, float] | None = None,
                 trivial: dict[str, dict] | None = None,
                 skipped_rows: dict[str, dict[str, int]] | None = None,
                 inputs_cut: dict[str, dict[str, list[int]]] | None = None) -> dict[str, Any]:
    """The report as data: scores (after, before and between stages; `final` and each of
    `after_stage` are {"metrics", "validation"}), each stage's cost and the evaluations' time."""
    tasks = model.tasks
    after = final["metrics"]
    stage_costs = {s.label: {"steps": s.steps, "trainable_params": s.trainable_params,
                             "wall_seconds": round(s.wall_seconds, 2), "tokens_per_s": round(s.tokens_per_s, 1)}
                   for s in stages}
    report: dict[str, Any] = {
        "backbone": model.config.backbone,
        "metrics": after,
        "macro": macro_average(tasks, after),
        "main_metrics": {task.name: task.main_metric for task in tasks if task.name in after},
        "eval_examples": eval_counts,
        "stages": stage_costs,
        "train_seconds": round(sum(cost["wall_seconds"] for cost in stage_costs.values()), 2),
        "eval_seconds": {name: round(seconds, 2) for name, seconds in (eval_seconds or {}).items()},
    }
    if trivial is not None:
        report["trivial"] = trivial
        report["macro_trivial"] = macro_average(tasks, {name: t["metrics"] for name, t in trivial.items()})
    if final.get("intervals"):  # each task's main score, 95% bootstrap interval over its examples (0-1)
        report["intervals"] = final["intervals"]
    report["shortfalls"] = shortfalls(tasks, after, trivial or {}, before, final.get("intervals"))
    if model.label_offsets:  # alter.evaluate.calibration
        report["label_offsets"] = model.label_offsets
    if skipped_rows:  # malformed rows the readers skipped: task -> split -> rows
        report["skipped_rows"] = skipped_rows
    if inputs_cut:  # task -> split -> [inputs shortened to max_source_length, inputs]
        report["inputs_cut"] = inputs_cut
        report["max_source_length"] = model.config.max_source_length
    if final.get("validation"):
        report["validation"] = {"metrics": final["validation"], "macro": macro_average(tasks, final["validation"])}
    if before is not None:
        report["before_training"] = before
        report["macro_before_training"] = macro_average(tasks, before)
    if after_stage:  # scores of the model as it was after an earlier stage
        report["after_stage"] = {}
        for label, scores in after_stage.items():
            entry = {"metrics": scores["metrics"], "macro": macro_average(tasks, scores["metrics"])}
            if scores.get("validation"):
                entry["validation_macro"] = macro_average(tasks, scores["validation"])
            report["after_stage"][label] = entry
    return report


def _offsets_line(model, offsets: dict[str, list[float]]) -> str:
    per_task = []
    for task, values in offsets.items():
        labels = model.tasks[model.task_id(task)].spec.labels
        per_task.append(f"{task} " + ", ".join(f"{label} {value:+.2f}" for label, value in zip(labels, values)))
    return ("**Decision offsets** (added to each label's log-probability; fitted on the validation examples): "
            + "; ".join(per_task))


def write_report(out: Path, model: TrainableModel, report: dict[str, Any]) -> dict[str, Any]:
    """report.json, report.md and the plots in `out`; returns the report with its plots."""
    tasks = model.tasks
    plots = {}
    if plot_losses(out / "log.jsonl", out / "loss_curves.png"):
        plots["loss_curves"] = "loss_curves.png"
    layer_names = [f"{'decoder ' if layer.stack == 'decoder' else ''}layer {layer.block}" for layer in model.mta_layers]
    gates = [layer.gate for layer in model.mta_layers]
    residual = bool(gates) and not bool(gates[0].fixed) and bool(gates[0].residual)
    start = None  # residual gates are drawn as what was learned on top of the stage-1 weights
    if residual:
        start = gates[0].stage1_weights(torch.arange(len(tasks), device=gates[0].assignment.device)).cpu()
    if plot_gates(model.task_gate_weights(), [t.name for t in tasks], layer_names, out / "gates.png", start):
        plots["gates"] = "gates.png"
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=2))
    stage_lines = ["| stage | steps | trainable params | wall time (s) | tokens/s |", "|---|---|---|---|---|"]
    for label, s in report["stages"].items():
        stage_lines.append(
            f"| {label} | {s['steps']} | {s['trainable_params']:,} | {s['wall_seconds']} | {s['tokens_per_s']} |")
    markdown = [f"# Report: {model.config.backbone}", "", "Scores on a 0-100 scale; evaluation examples per task: "
                + ", ".join(f"{k} {v}" for k, v in report["eval_examples"].items()), "",
                markdown_table(tasks, report["metrics"], report.get("before_training"), report.get("trivial")), ""]
    if report.get("shortfalls"):
        markdown += ["**Not clearly learned:**", "", *(f"- {line}" for line in report["shortfalls"]), ""]
    if report.get("label_offsets"):
        markdown += [_offsets_line(model, report["label_offsets"]), ""]
    if report.get("inputs_cut"):
        markdown += [f"**Inputs cut** to max_source_length ({report['max_source_length']} tokens): "
                     + inputs_cut_text(report["inputs_cut"]), ""]
    if report.get("skipped_rows"):
        markdown += ["**Malformed rows skipped:** " + "; ".join(
            f"{task} {split} {rows}" for task, splits in report["skipped_rows"].items()
            for split, rows in splits.items()), ""]
    markdown += ["## Stages", "", *stage_lines, "",
                 f"Training {report['train_seconds']:.0f} s; evaluation "
                 + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["eval_seconds"].items()) + ".", ""]
    markdown += [f"![{name}]({path})" for name, path in plots.items()]
    (out / "report.md").write_text("\n".join(markdown) + "\n")
    return report
