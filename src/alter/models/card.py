"""The model card of a saved model: README.md with the Hub's YAML front matter, so that a
folder written by `save_pretrained` (or `alter train`) can be pushed to the Hub as it is."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from alter.backbones import hub_id
from alter.data.task import Task

CARD_FILE = "README.md"
GATES_IMAGE = "gates.png"
TASK_TYPES = {"classification": "text-classification", "regression": "text-classification",
              "generation": "summarization"}
EXPERT_NAMES = {"lora": "LoRA", "bottleneck": "bottleneck", "ffn_copy": "FFN-copy"}
HEAD_NAMES = {"lm": "the backbone's language-model head (answers as words)",
              "classifier": "a classifier or regressor per task"}


def write_model_card(directory: Path, model, run: Path | None = None) -> Path:
    """Write `directory/README.md`: the tasks, how to load it and, when `run` (the training
    run's folder) is given, their scores from its report, the gate heatmap (copied in) and
    the config that trained it."""
    report = json.loads((run / "report.json").read_text()) if run and (run / "report.json").exists() else None
    if run is not None and (run / GATES_IMAGE).exists():
        shutil.copyfile(run / GATES_IMAGE, directory / GATES_IMAGE)
    scores = (report or {}).get("metrics", {})
    # A run's model folder is `model/`: the run's own name says more.
    name = run.resolve().name if run is not None and directory.resolve().parent == run.resolve() \
        else directory.resolve().name
    data = ModelCardData(
        library_name="alter", base_model=hub_id(model.config.backbone), model_name=name,
        tags=["alter", "mixture-of-task-adapters", "multi-task", *(task.name for task in model.tasks)],
        eval_results=[_eval_result(task, scores[task.name]) for task in model.tasks if task.name in scores] or None)
    lines = ["---", data.to_yaml(), "---", "", f"# {name}", "",
             _summary(model), "", "## Tasks", "", *_task_table(model.tasks, scores), ""]
    if (directory / GATES_IMAGE).exists():
        lines += ["## Gates", "", "How much each task (row) draws on each expert (column), per MTA layer:", "",
                  f"![gate weights]({GATES_IMAGE})", ""]
    config = run / "config.yaml" if run is not None else None
    lines += _usage(model.tasks[0]) + _training(report, config.read_text() if config and config.exists() else None)
    path = directory / CARD_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def _eval_result(task: Task, metrics: dict[str, float]) -> EvalResult:
    dev = task.spec.splits.get("dev")
    hub = dev.hub if dev is not None else None
    return EvalResult(task_type=TASK_TYPES[task.kind], dataset_type=hub.path if hub else task.name,
                      dataset_name=task.name, dataset_config=hub.name if hub else None,
                      dataset_split=hub.split if hub else None, metric_type=task.main_metric,
                      metric_value=round(100 * metrics[task.main_metric], 1))


def _summary(model) -> str:
    mta = model.config.mta
    if mta.enabled:
        design = (f"Mixture-of-Task-Adapters: {EXPERT_NAMES[mta.kind]} experts of rank {mta.rank} in "
                  f"{len(model.mta_layers)} layers, {'task' if mta.gate == 'task' else mta.gate} gates"
                  + (", a shared expert" if mta.shared_expert else ""))
    elif model.config.lora is not None:
        design = f"one LoRA adapter (r={model.config.lora.r}) shared by every task"
    else:
        design = "no task modules"
    return (f"A multi-task model trained with alter: the backbone "
            f"`{model.config.backbone}` with {design}, and {HEAD_NAMES[model.config.head]}, serving "
            f"{len(model.tasks)} task(s) from one set of weights.")


def _task_table(tasks: list[Task], scores: dict[str, dict[str, float]]) -> list[str]:
    rows = ["| task | kind | inputs | answers | main metric | score (0-100) |", "|---|---|---|---|---|---|"]
    for task in tasks:
        answers = (", ".join(task.spec.labels) if task.kind == "classification"
                   else "a score in [{}, {}]".format(*task.spec.score_range) if task.kind == "regression"
                   else _writes(task))
        score = scores.get(task.name, {}).get(task.main_metric)
        rows.append(f"| {task.name} | {task.kind} | {', '.join(task.spec.inputs)} | {answers} | {task.main_metric} | "
                    f"{'–' if score is None else f'{100 * score:.1f}'} |")
    return rows


def _writes(task: Task) -> str:
    """A generation task's answer: text, and the settings it is written with."""
    settings = task.spec.generation.model_dump(exclude_none=True) if task.spec.generation else {}
    return "text" + (f" ({', '.join(f'{key} {value}' for key, value in settings.items())})" if settings else "")


def _usage(task: Task) -> list[str]:
    inputs = ", ".join(f'"{field}": "..."' for field in task.spec.inputs)
    return ["## Use", "", "```python", "import alter", "",
            'model = alter.load("path/to/this/folder")',
            f'model.predict([{{"task": "{task.name}", "inputs": {{{inputs}}}}}])', "```", "",
            "or serve every task over HTTP: `alter serve path/to/this/folder`.", ""]


def _training(report: dict[str, Any] | None, config: str | None) -> list[str]:
    command = " ".join(["alter", *sys.argv[1:]]) if Path(sys.argv[0]).name == "alter" else None
    lines = ["## Training", "", f"Trained with `{command}`." if command else "Trained with alter."]
    if report:
        lines += ["", "| stage | steps | trainable parameters | wall time (s) |", "|---|---|---|---|"]
        lines += [f"| {label} | {stage['steps']} | {stage['trainable_params']:,} | {stage['wall_seconds']} |"
                  for label, stage in report.get("stages", {}).items()]
        counts = report.get("eval_examples", {})
        lines += ["", "Scores on the evaluation examples (per task: "
                  + ", ".join(f"{name} {count}" for name, count in counts.items()) + ")."] if counts else []
    if config:
        lines += ["", "<details><summary>The run's config (<code>alter train</code> reruns it)</summary>", "",
                  "```yaml", config.rstrip(), "```", "", "</details>"]
    return lines
