"""What a task is, as data: its spec (built-in, from a user's YAML, or saved with a model),
where its splits live, and the names of the metrics a task may ask for (their functions are
`alter.evaluate.metrics`, checked against these names by the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alter.data.generation import DEFAULT_WRITING, GenerationSettings

TaskKind = Literal["classification", "regression", "generation"]
METRIC_NAMES = ("accuracy", "f1", "mcc", "pearson", "spearman", "rouge1", "rouge2", "rougeL", "rougeLsum")
DEFAULT_METRICS = {
    "classification": ["accuracy"],
    "regression": ["pearson", "spearman"],
    "generation": ["rouge1", "rouge2", "rougeL", "rougeLsum"],
}
DEFAULT_MAIN = {"classification": "accuracy", "regression": "spearman", "generation": "rougeL"}



class HubSource(BaseModel):
    """Where a built-in task's split lives on the Hugging Face hub (used when online)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = None
    split: str
    columns: dict[str, str] = {}  # our column name -> the hub's column name
    label_map: dict[str, str] = {}  # the hub's raw label -> our raw label


class SplitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # relative to the data root, or absolute
    format: Literal["tsv", "csv", "jsonl"] | None = None  # default: from the suffix
    header: bool = True
    columns: list[str] | None = None  # column names of a file without header
    skip: int = Field(default=0, ge=0)  # rows to drop from the start (e.g. a held-out part)
    limit: int | None = Field(default=None, ge=1)  # rows to keep after `skip`
    hub: HubSource | None = None


class TaskSpec(BaseModel):
    """The frozen, serialisable description of a task (built-in or from a user's YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: TaskKind
    inputs: dict[str, str]  # prompt field -> column
    target: str  # column holding the label, score or reference text
    template: str  # e.g. "Review: {sentence}\nSentiment:"; fields are the keys of `inputs`
    splits: dict[str, SplitSource] = {}
    labels: list[str] | None = None
    label_map: dict[str, str] = {}  # raw value in the file -> label name
    verbalizer: dict[str, str] | None = None  # label -> word the LM says; default: the label
    score_range: tuple[float, float] = (0.0, 5.0)  # regression
    references: list[str] = []  # extra reference columns for generation metrics
    metrics: list[str] = []
    main_metric: str | None = None
    # How a generation task writes (beams, repetition controls, length, sampling), saved with
    # the model; the caller's settings fill what is unset, a request may override them.
    generation: GenerationSettings | None = None

    @field_validator("splits", mode="before")
    @classmethod
    def _paths_as_sources(cls, splits: dict) -> dict:
        """A split may be given as its file's path alone."""
        return {name: {"path": str(source)} if isinstance(source, (str, Path)) else source
                for name, source in (splits or {}).items()}

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.kind == "classification" and not self.labels:
            raise ValueError(f"task {self.name}: a classification task needs `labels`")
        if self.verbalizer and self.labels and set(self.verbalizer) != set(self.labels):
            raise ValueError(f"task {self.name}: verbalizer keys must be the labels {self.labels}")
        for field in self.inputs:
            if "{" + field + "}" not in self.template:
                raise ValueError(f"task {self.name}: template does not use input field '{{{field}}}'")
        unknown = [name for name in [*self.metrics, *([self.main_metric] if self.main_metric else [])]
                   if name not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"task {self.name}: unknown metric(s) {', '.join(unknown)}; "
                             f"known: {', '.join(METRIC_NAMES)}")
        if self.generation is not None and self.kind != "generation":
            raise ValueError(f"task {self.name}: `generation` settings are for generation tasks; this one is "
                             f"{self.kind}")
        if self.main_metric and self.metrics and self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name}: main_metric {self.main_metric} is not one of its metrics "
                             f"{self.metrics}")
        return self

    def declared(self) -> TaskSpec:
        """The spec as a newly declared task gets it (a registry's task, a user's file): a
        generation task writes no 3-gram twice unless it says otherwise (`DEFAULT_WRITING`),
        since greedy summaries of a small model loop on a phrase. A saved model's specs are
        loaded as they were saved, so its answers do not change."""
        if self.kind != "generation":
            return self
        return self.model_copy(update={"generation": (self.generation or GenerationSettings()).over(DEFAULT_WRITING)})
