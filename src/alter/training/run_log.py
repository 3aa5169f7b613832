"""What a run records while it trains: `log.jsonl` always, TensorBoard events when the config
asks for them (`logging: {tensorboard: true}`), written by the main process only.

TensorBoard's step axis runs across stages (stage 2's step 1 follows stage 1's last step),
as the loss plot of report.md does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

TENSORBOARD_DIR = "tensorboard"


class RunLog:
    def __init__(self, path: Path, enabled: bool = True, events: TensorBoardEvents | None = None):
        self.path = path
        self.enabled = enabled
        self.events = events if enabled else None
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """One training record ({"stage", "step", "loss", "task_loss", ...}): a JSONL line."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.events:
            self.events.training(record)

    def scores(self, name: str, metrics: dict[str, dict[str, float]], stage: str | None) -> None:
        """An evaluation's metrics (`name`: final, after_stage1...), at the end of `stage`."""
        if self.events:
            self.events.scores(name, metrics, stage)

    def gates(self, weights: torch.Tensor, task_names: Sequence[str], stage: str | None) -> None:
        if self.events and weights.numel():
            self.events.gates(weights, task_names, stage)

    def close(self) -> None:
        if self.events:
            self.events.writer.close()


class TensorBoardEvents:
    """Scalars under train/ (loss, per-task loss, lr, tokens/s), validation/macro, each
    evaluation's metrics (0-100) and the gate weights (mean over MTA layers)."""

    def __init__(self, directory: Path, stage_steps: dict[str, int]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("logging.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(directory))
        self.offsets: dict[str, int] = {}  # stage -> global step before its first step
        total = 0
        for label, steps in stage_steps.items():
            self.offsets[label] = total
            total += steps
        self.ends = {label: self.offsets[label] + steps for label, steps in stage_steps.items()}

    def _step(self, stage: str | None, step: int | None = None) -> int:
        if stage is None:
            return 0
        return self.offsets.get(stage, 0) + step if step is not None else self.ends.get(stage, 0)

    def training(self, record: dict[str, Any]) -> None:
        step = self._step(record["stage"], record["step"])
        for key in ("loss", "lr", "tokens_per_s"):
            if key in record:
                self.writer.add_scalar(f"train/{key}", record[key], step)
        for task, loss in record.get("task_loss", {}).items():
            self.writer.add_scalar(f"train/loss/{task}", loss, step)
        if "eval_macro" in record:
            self.writer.add_scalar("validation/macro", record["eval_macro"], step)

    def scores(self, name: str, metrics: dict[str, dict[str, float]], stage: str | None) -> None:
        step = self._step(stage)
        for task, values in metrics.items():
            for metric, value in values.items():
                self.writer.add_scalar(f"eval_{name}/{task}/{metric}", 100 * value, step)

    def gates(self, weights: torch.Tensor, task_names: Sequence[str], stage: str | None) -> None:
        """weights (L, tasks, K): each task's weight on each expert, averaged over layers."""
        step = self._step(stage)
        mean = weights.mean(dim=0)  # (tasks, K)
        for task, row in zip(task_names, mean.tolist()):
            for expert, value in enumerate(row):
                self.writer.add_scalar(f"gates/{task}/expert_{expert}", value, step)
