"""The package's import graph, read from the code (lazy imports included): no circle, and every
import runs down the layers of docs/architecture.md, never up or sideways."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alter"

# Each module's layer, by the first match of its dotted name; a layer may import its own
# modules and those of layers of a lower rank. Layers of one rank know nothing of each other.
LAYERS = [  # (name prefix, layer, rank)
    ("alter.data", "data", 0),
    ("alter.mta", "mta", 0),
    ("alter.backbones", "backbones", 0),
    ("alter.tiny", "backbones", 0),
    ("alter.config", "config", 1),
    ("alter.models", "models", 2),
    ("alter.evaluate", "evaluate", 3),
    ("alter.training", "training", 4),
    ("alter.experiment", "experiment", 5),
    ("alter.serve", "serve", 5),
    ("alter.library", "facade", 6),
    ("alter.cli", "facade", 6),
    ("alter", "facade", 6),  # alter/__init__.py
]


def layer_of(module: str) -> tuple[str, int]:
    for prefix, layer, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer, rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its code."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` folders up
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known and name != module}
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {module: imports_of(module, path, set(found)) for module, path in found.items()}


def test_the_import_graph_has_no_circle():
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_every_import_runs_down_the_layers():
    upward = []
    for module, imported in sorted(import_graph().items()):
        layer, rank = layer_of(module)
        for target in sorted(imported):
            target_layer, target_rank = layer_of(target)
            if target_layer != layer and target_rank >= rank:
                upward.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_a_circle_and_an_upward_import_are_caught():
    """The checks above would fail on what they guard against."""
    with pytest.raises(CycleError):
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    assert layer_of("alter.data.task")[1] < layer_of("alter.models.heads")[1]
    assert layer_of("alter.serve.server")[1] == layer_of("alter.experiment.runner")[1]
