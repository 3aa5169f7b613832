"""`alter tasks`: the registered tasks and their data."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer
from rich.table import Table

from alter.cli.common import app, console, friendly_errors


@app.command()
@friendly_errors
def tasks(data_root: Annotated[Optional[str], typer.Option(help="data folder")] = None) -> None:
    """List the registered tasks and the sizes of their splits."""
    from alter.data.registry import builtin_registry
    from alter.data.task import data_root as resolve_root

    root = resolve_root(data_root)
    registry = builtin_registry()
    table = Table(title=f"tasks (data root: {root})")
    for column in ("task", "kind", "main metric", "splits"):
        table.add_column(column)
    skipped = _Collected()  # rows a reader skipped: a note under the table, once per file
    readers = logging.getLogger("alter.data.readers")
    readers.addHandler(skipped)
    readers.propagate = False
    try:
        for name in registry.names():
            task = registry.get(name)
            sizes = []
            for split, source in task.spec.splits.items():
                path = root / source.path
                sizes.append(f"{split} {len(task.read(split, root)):,}" if path.exists() else f"{split} (missing)")
            table.add_row(name, task.kind, task.main_metric, ", ".join(sizes))
    finally:
        readers.removeHandler(skipped)
        readers.propagate = True
    console.print(table)
    for note in dict.fromkeys(skipped.messages):
        console.print(f"[dim]note: {note}[/dim]")


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
