"""The contract between a trainable system and the code that trains, scores, reports and
saves it: the loop, the evaluator, the report, the distributed wrappers and `alter.load`.

`MTAModel` (every transformer system: MTA, the shared-LoRA baselines, full fine-tuning, the
encoder) and `BiLSTMModel` (the from-scratch baseline) implement it; a saved folder names
its architecture in `alter.json`, and `load_model` builds the matching class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from alter.config import ModelConfig, StageConfig
from alter.data.collate import Encoded
from alter.data.task import Example, Task
from alter.heads import Prediction
from alter.saved import read_meta

ARCHITECTURES = ("transformer", "bilstm")


@runtime_checkable
class TrainableModel(Protocol):
    config: ModelConfig
    tasks: list[Task]
    mta_layers: list  # MTALayer, in order; empty for a system without MTA
    backbone_trained: bool  # whether the backbone's own weights are part of what it saves

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Every parameter in one of: experts, gates, adapters, heads, backbone."""

    def begin_stage(self, stage: StageConfig) -> None:
        """Set the gates for the stage about to train (a system without gates does nothing)."""

    def task_gate_weights(self) -> torch.Tensor:
        """(layers, tasks, experts); empty without gates."""

    def task_id(self, name: str) -> int: ...

    def encode(self, examples: Sequence[Example], with_target: bool = True) -> list[Encoded]: ...

    def __call__(self, rows: Sequence[Encoded]) -> torch.Tensor:
        """Per-example training losses of a mixed-task batch, (B,)."""

    def predict(self, examples: Sequence[Example], batch_size: int = 16, max_new_tokens: int = 48,
                num_beams: int = 1, progress: str | None = None) -> list[Prediction]: ...

    def task_parameters(self, task_id: int) -> dict[str, int | None]:
        """The trained weights that serve task `task_id` alone, {parameter name: its row of
        the tensor (a stacked expert's, a gate's task row), or None for the whole tensor}."""

    def trained_state(self) -> dict[str, torch.Tensor]: ...

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None: ...

    def load_trained(self, directory: str | Path) -> None:
        """Load the weights that `save` wrote in `directory` into this model."""


def load_model(directory: str | Path) -> TrainableModel:
    """Whatever trainable system was saved in `directory` (`alter.load`)."""
    directory = Path(directory)
    architecture = read_meta(directory).get("architecture", "transformer")
    if architecture == "bilstm":
        from alter.baselines.bilstm import BiLSTMModel

        return BiLSTMModel.load(directory)
    if architecture != "transformer":
        raise ValueError(f"{directory}: unknown architecture '{architecture}' (known: {', '.join(ARCHITECTURES)})")
    from alter.model import MTAModel

    return MTAModel.load(directory)
