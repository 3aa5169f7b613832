"""A user's task from files, in Python: `Task.from_file("tickets.csv", name="urgency", ...)`.

The same `TaskSpec` that a YAML config's `data.custom_tasks` declares, with what can be
read off the files filled in: the labels (the target column's values, sorted) and a plain
prompt template.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alter.data.readers import DataError, read_rows
from alter.data.spec import TaskKind, TaskSpec

MAX_INFERRED_LABELS = 50  # more distinct values than this: the column is likely not a label


def spec_from_files(train: str | Path, *, name: str, kind: TaskKind = "classification",
                    inputs: Sequence[str] | dict[str, str] = ("text",), target: str = "label",
                    dev: str | Path | None = None, labels: Sequence[str] | None = None,
                    template: str | None = None, **fields: Any) -> TaskSpec:
    """A task whose `train` (and `dev`) split are CSV, TSV or JSONL files. `inputs`: the
    columns the prompt shows (or {field: column}); `target`: the label, score or reference
    column; `fields`: any other `TaskSpec` field (`verbalizer`, `score_range`, `metrics`...)."""
    paths = {"train": Path(train).expanduser().resolve()}
    if dev is not None:
        paths["dev"] = Path(dev).expanduser().resolve()
    for split, path in paths.items():
        if not path.exists():
            raise DataError(f"task {name}: {split} file not found: {path}")
    columns = dict(inputs) if isinstance(inputs, dict) else {column: column for column in inputs}
    if kind == "classification" and labels is None:
        labels = _labels_in(paths["train"], target, name)
    return TaskSpec(name=name, kind=kind, inputs=columns, target=target,
                    template=template or default_template(list(columns)),
                    splits={split: str(path) for split, path in paths.items()},
                    labels=list(labels) if labels is not None else None, **fields).declared()


def default_template(fields: list[str]) -> str:
    """One line per input field, then the answer's cue: "text: {text}\\nAnswer:"."""
    return "\n".join(f"{field}: {{{field}}}" for field in fields) + "\nAnswer:"


def _labels_in(path: Path, target: str, name: str) -> list[str]:
    values: set[str] = set()
    for line, row in read_rows(path):
        if "__malformed__" in row:
            continue
        if target not in row:
            raise DataError(f"{path}:{line}: task {name} has no column '{target}' (its target); columns: "
                            f"{', '.join(row)}")
        if str(row[target]) != "":
            values.add(str(row[target]))
    if not values:
        raise DataError(f"{path}: no labels found in column '{target}' for task {name}")
    if len(values) > MAX_INFERRED_LABELS:
        raise DataError(f"{path}: column '{target}' holds {len(values)} distinct values, too many to be the labels "
                        f"of task {name}; give `labels=` (or kind='regression' / 'generation')")
    return sorted(values)
