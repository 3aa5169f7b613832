"""A run's report as a typed object: what `report.json` holds, read back with its types.

Scores are fractions (0-1) per task and metric; macro averages are on the 0-100 scale, as
in report.md.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

Metrics = dict[str, dict[str, float]]  # task -> metric -> value (0-1)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer report may hold more


class StageCost(_Record):
    steps: int
    trainable_params: int
    wall_seconds: float
    tokens_per_s: float


class TrivialScore(_Record):
    metrics: dict[str, float]
    rule: str | None = None  # e.g. "majority label: positive"


class ScoresAfterStage(_Record):
    metrics: Metrics
    macro: float
    validation_macro: float | None = None


class ValidationScores(_Record):
    metrics: Metrics
    macro: float


class Report(_Record):
    backbone: str
    metrics: Metrics
    macro: float
    main_metrics: dict[str, str]
    eval_examples: dict[str, int]
    stages: dict[str, StageCost]
    train_seconds: float
    eval_seconds: dict[str, float] = {}
    trivial: dict[str, TrivialScore] | None = None
    macro_trivial: float | None = None
    intervals: dict[str, tuple[float, float]] = {}  # main score, 95% bootstrap interval over the examples (0-1)
    shortfalls: list[str] = []  # tasks not clearly learned (alter.evaluate.trivial.shortfalls)
    validation: ValidationScores | None = None
    before_training: Metrics | None = None
    macro_before_training: float | None = None
    after_stage: dict[str, ScoresAfterStage] | None = None
    plots: dict[str, str] = {}
    label_offsets: dict[str, list[float]] = {}  # decision offsets per classification task (alter.evaluate.calibration)
    skipped_rows: dict[str, dict[str, int]] = {}  # malformed rows the readers skipped: task -> split -> rows
    inputs_cut: dict[str, dict[str, tuple[int, int]]] = {}  # task -> split -> (inputs cut, inputs)
    max_source_length: int | None = None  # what they were cut to (tokens), where any was

    def score(self, task: str) -> float:
        """The task's main metric, 0-100."""
        return 100 * self.metrics[task][self.main_metrics[task]]

    @classmethod
    def read(cls, path: str | Path) -> Report:
        """A report.json, or the report.json of a run folder."""
        path = Path(path)
        return cls.model_validate_json((path / "report.json" if path.is_dir() else path).read_text())

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2, exclude_none=True))
