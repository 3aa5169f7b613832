"""An explicit registry of tasks: built-in ones added by `builtin_registry()`, a user's by hand."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from alter.data.builtin import BUILTIN_TASKS
from alter.data.spec import TaskSpec
from alter.data.task import Task


class TaskNotFoundError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class TaskRegistry:
    def __init__(self, specs: Iterable[TaskSpec] = ()):
        self._tasks: dict[str, Task] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: TaskSpec) -> Task:
        if spec.name in self._tasks:
            raise ValueError(f"task '{spec.name}' is registered twice")
        task = Task(spec.declared())
        self._tasks[spec.name] = task
        return task

    def get(self, name: str) -> Task:
        if name not in self._tasks:
            raise TaskNotFoundError(f"unknown task '{name}'; known tasks: {', '.join(self._tasks)}")
        return self._tasks[name]

    def names(self) -> list[str]:
        return list(self._tasks)

    def __contains__(self, name: str) -> bool:
        return name in self._tasks


def builtin_registry(user_specs: Iterable[TaskSpec] = ()) -> TaskRegistry:
    """The built-in tasks plus a user's own (a user task may not reuse a built-in name)."""
    return TaskRegistry([*BUILTIN_TASKS, *user_specs])


def resolve_tasks(tasks: Sequence[str | Task | TaskSpec]) -> list[Task]:
    """Tasks given in Python: built-in names, `Task`s or `TaskSpec`s, in order."""
    registry = builtin_registry()
    resolved = [registry.get(task) if isinstance(task, str) else Task(task) if isinstance(task, TaskSpec) else task
                for task in tasks]
    names = [task.name for task in resolved]
    check_unique(names, "tasks")
    return resolved


def check_unique(names: Sequence[str], where: str) -> None:
    """A task named twice in one list (`where`: the list's place, e.g. `data.tasks`) is an error."""
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{where}: task(s) listed twice: {', '.join(duplicates)}")
