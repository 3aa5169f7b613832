"""A task: where its rows come from, how a row becomes input text and target, its metrics."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from alter.data.readers import DataError, MalformedRows, read_rows
from alter.data.spec import DEFAULT_MAIN, DEFAULT_METRICS, SplitSource, TaskKind, TaskSpec


@dataclass(frozen=True)
class Example:
    task: str
    inputs: dict[str, str]
    target: str | float | None  # label name, score or reference text; None when hidden
    references: tuple[str, ...] = ()  # every reference text of a generation example
    source: str = ""  # "file:line", for messages


def as_example(item: Example | dict) -> Example:
    """An `Example`, or a request {"task": NAME, "inputs": {FIELD: TEXT}} as one (no target)."""
    if isinstance(item, Example):
        return item
    if not isinstance(item, dict) or not isinstance(item.get("task"), str) or not isinstance(item.get("inputs"), dict):
        raise ValueError(f'an example is an Example or {{"task": NAME, "inputs": {{FIELD: TEXT}}}}, got {item!r:.80}')
    return Example(item["task"], {field: str(text) for field, text in item["inputs"].items()}, None)


def checkout_data() -> Path | None:
    """`../shared/data` beside a source checkout (this file is `src/alter/data/task.py` under a
    folder with `pyproject.toml`); None in an installed package, where the layout says nothing."""
    source = Path(__file__).resolve().parents[3]
    if not (source / "pyproject.toml").exists() or Path(__file__).resolve().parents[2].name != "src":
        return None
    return source.parent / "shared" / "data"


def data_root(configured: str | None = None) -> Path:
    """Where relative task paths are read from: the config's `data.root`, else ALTER_DATA_DIR,
    else the first that exists of ../shared/data beside the checkout, ../shared/data beside the
    working directory and ./data. With none of them a relative path is read from ./data, and a
    missing file's error says to set `data.root` or ALTER_DATA_DIR."""
    for candidate in (configured, os.environ.get("ALTER_DATA_DIR")):
        if candidate:
            return Path(candidate).expanduser()
    for candidate in (checkout_data(), Path.cwd().parent / "shared" / "data", Path.cwd() / "data"):
        if candidate is not None and candidate.exists():
            return candidate
    return Path.cwd() / "data"


class Task:
    """Behaviour of one task, built from its spec: `Task(spec)`, or `Task(name=..., kind=...,
    ...)` with the fields of `TaskSpec`, or `Task.from_file(...)` for a user's CSV/TSV/JSONL."""

    def __init__(self, spec: TaskSpec | None = None, /, **fields):
        if spec is None:
            spec = TaskSpec(**fields)
        elif fields:
            raise TypeError("Task takes a TaskSpec or the fields of one, not both")
        self.spec = spec
        self.name = spec.name
        self.kind: TaskKind = spec.kind
        self.skipped_rows: dict[str, int] = {}  # split -> malformed rows skipped by `read`
        self.metrics = spec.metrics or DEFAULT_METRICS[spec.kind]
        self.main_metric = spec.main_metric or DEFAULT_MAIN[spec.kind]

    @classmethod
    def from_file(cls, train: str | Path, **settings) -> Task:
        """A task from a CSV / TSV / JSONL file (`alter.data.user_task.spec_from_files`)."""
        from alter.data.user_task import spec_from_files  # it builds TaskSpecs: imported late

        return cls(spec_from_files(train, **settings))

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.kind})"

    # --- reading ------------------------------------------------------------------------
    def read(self, split: str, root: Path, strict: bool = False) -> list[Example]:
        """The split's examples. A malformed row (wrong number of fields, invalid JSON) is
        skipped with a warning and counted in `skipped_rows` (an error with `strict`, or
        when there are many); an empty input field or a label outside the label set is an
        error naming the file and line."""
        if split not in self.spec.splits:
            raise DataError(f"task {self.name} has no split '{split}' (it has: {', '.join(self.spec.splits)})")
        source = self.spec.splits[split]
        path = Path(source.path) if Path(source.path).is_absolute() else root / source.path
        if not path.exists():
            return self._from_hub(split, source, path)
        examples: list[Example] = []
        malformed = MalformedRows(path, strict=strict)
        invalid: DataError | None = None  # the first row that is an error: said with the skipped ones
        rows = read_rows(path, source.format, source.header, source.columns)
        for index, (line, row) in enumerate(rows):
            if index < source.skip:
                continue
            if source.limit is not None and len(examples) + len(malformed.problems) >= source.limit:
                break
            problem = row.get("__malformed__")
            if problem is None:
                if invalid:
                    continue
                try:
                    examples.append(self.example(row, f"{path}:{line}"))
                    continue
                except KeyError as missing:
                    problem = f"missing column {missing}"
                except DataError as error:
                    invalid = error
                    continue
            malformed.add(line, problem)
        if invalid:
            raise DataError(f"{invalid}{malformed.besides()}")
        malformed.finish(len(examples))
        if malformed.problems:
            self.skipped_rows[split] = len(malformed.problems)
        return examples

    def _from_hub(self, split: str, source: SplitSource, path: Path) -> list[Example]:
        hint = (f"task {self.name}: {split} file not found: {path}. Put the file there, point "
                "`data.root` (or ALTER_DATA_DIR) at a folder that holds it")
        if source.hub is None:
            raise DataError(hint)
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise DataError(hint + f", or go online to fetch {source.hub.path} from the hub")
        try:
            import datasets
        except ImportError:
            raise DataError(hint + ", or `pip install datasets` to fetch it from the hub") from None
        try:
            hub = datasets.load_dataset(source.hub.path, source.hub.name, split=source.hub.split)
        except Exception as error:  # noqa: BLE001 - any hub failure means the same to the user
            raise DataError(hint + f" (the hub was tried and failed: {error.__class__.__name__})") from None
        theirs = {ours: source.hub.columns.get(ours, ours) for ours in self._columns()}
        examples = []
        for index, record in enumerate(hub):
            row = {ours: str(record[name]) for ours, name in theirs.items() if name in record}
            raw = row.get(self.spec.target)
            if raw in source.hub.label_map:
                row[self.spec.target] = source.hub.label_map[raw]
            examples.append(self.example(row, f"{source.hub.path}[{index}]"))
        return examples[source.skip: None if source.limit is None else source.skip + source.limit]

    def _columns(self) -> list[str]:
        return [*self.spec.inputs.values(), self.spec.target, *self.spec.references]

    def example(self, row: dict, where: str) -> Example:
        """One row -> Example; a value outside the label set is an error naming `where`."""
        inputs = {field: str(row[column]) for field, column in self.spec.inputs.items()}
        for field, text in inputs.items():
            if not text.strip():
                raise DataError(f"{where}: input field '{field}' (column '{self.spec.inputs[field]}') of task "
                                f"{self.name} is empty")
        raw = row.get(self.spec.target)
        target: str | float | None = None
        references: tuple[str, ...] = ()
        if raw is not None and str(raw) != "":
            if self.kind == "classification":
                label = self.spec.label_map.get(str(raw), str(raw))
                if label not in self.spec.labels:
                    raise DataError(f"{where}: label '{raw}' of task {self.name} is not one of "
                                    f"{sorted(set(self.spec.label_map) | set(self.spec.labels))}")
                target = label
            elif self.kind == "regression":
                try:
                    target = float(raw)
                except ValueError:
                    raise DataError(f"{where}: score '{raw}' of task {self.name} is not a number") from None
            else:
                target = str(raw)
        if self.kind == "generation":
            # Every reference text; a split with reference columns only (DialogSum's test split:
            # summary1-3, no summary) takes the first of them as its target.
            references = tuple(text for text in (target, *(str(row[c]) for c in self.spec.references if row.get(c)))
                               if text)
            target = references[0] if references else None
        return Example(self.name, inputs, target, references, where)

    def missing_inputs(self, inputs: dict) -> list[str]:
        """The task's input fields that `inputs` lacks."""
        return [field for field in self.spec.inputs if field not in inputs]

    # --- text-to-text view --------------------------------------------------------------
    def prompt(self, inputs: dict[str, str]) -> str:
        return self.spec.template.format(**inputs)

    @property
    def candidates(self) -> list[str]:
        """Words scored by rank classification: one per label, or one per score bin."""
        if self.kind == "classification":
            verbalizer = self.spec.verbalizer or {}
            return [verbalizer.get(label, label) for label in self.spec.labels]
        if self.kind == "regression":
            low, high = self.spec.score_range
            return [str(value) for value in range(math.floor(low), math.ceil(high) + 1)]
        return []

    def target_text(self, example: Example) -> str:
        if self.kind == "classification":
            return self.candidates[self.spec.labels.index(example.target)]
        if self.kind == "regression":
            low, high = self.spec.score_range
            return str(int(round(min(max(example.target, low), high))))
        return example.target

    def candidate_distribution(self, example: Example) -> list[float]:
        """The target as probabilities over `candidates`: all on the label; a score split
        between its two nearest bins, so that the expected value is the score itself."""
        probs = [0.0] * len(self.candidates)
        if self.kind != "regression":
            probs[self.spec.labels.index(example.target)] = 1.0
            return probs
        bins = [float(word) for word in self.candidates]
        value = min(max(float(example.target), bins[0]), bins[-1])
        below = max(i for i, edge in enumerate(bins) if edge <= value)
        if below == len(bins) - 1:
            probs[below] = 1.0
            return probs
        share = (value - bins[below]) / (bins[below + 1] - bins[below])
        probs[below], probs[below + 1] = 1.0 - share, share
        return probs

    def from_candidate_probs(self, probs: list[float]) -> tuple[str | float, dict[str, float]]:
        """Probabilities over `candidates` -> (prediction, score of each label or bin)."""
        if self.kind == "regression":
            value = sum(p * float(word) for p, word in zip(probs, self.candidates))
            return value, dict(zip(self.candidates, probs))
        best = max(range(len(probs)), key=probs.__getitem__)
        return self.spec.labels[best], dict(zip(self.spec.labels, probs))

    # --- classifier-head view -----------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.spec.labels) if self.kind == "classification" else 1

    def label_index(self, example: Example) -> int | float:
        if self.kind == "classification":
            return self.spec.labels.index(example.target)
        return float(example.target)

    def from_head_output(self, values: list[float]) -> tuple[str | float, dict[str, float]]:
        if self.kind == "regression":
            return values[0], {}
        return self.from_candidate_probs(values)
