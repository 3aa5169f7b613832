"""The contract between a model and everything that trains, scores, reports, saves and serves
it: the loop, the evaluator, the report, the distributed wrappers, `alter.load` and the server.
They know a model by this contract alone.

`MTAModel` (every transformer system: MTA, the shared-LoRA baselines, full fine-tuning, the
encoder) and `BiLSTMModel` (the from-scratch baseline) implement `TrainableModel`; what only
some systems can do is declared in their `capabilities`, never probed. `ServableModel` is what
the server needs besides (MTAModel; `capabilities.serving`). A saved folder names its
architecture in `alter.json`, and `alter.load` (`alter.models.loading`) builds the matching class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from alter.config import ModelConfig, StageConfig
from alter.data.collate import Encoded
from alter.data.generation import GenerationSettings
from alter.data.task import Example, Task
from alter.models.quantized import Quantize
from alter.mta.plan import ExpertPlan

if TYPE_CHECKING:
    from alter.models.decode_batch import DecodeBatch

Prediction = tuple[Any, dict[str, float]]  # (label / score / text, probability of each label)


@dataclass(frozen=True)
class Capabilities:
    """What a system can do beyond the contract's common part."""

    gates: bool = False  # MTA gates: `prune_gates`, stage-2 collaboration, gate heatmaps
    label_offsets: bool = False  # decisions move by per-task label offsets (`eval.calibrate`)
    serving: bool = False  # a `ServableModel`: the server's Predictor and schedulers
    fsdp: bool = False  # a pretrained transformer `backbone` whose blocks FSDP may shard


@runtime_checkable
class TrainableModel(Protocol):
    config: ModelConfig
    tasks: list[Task]
    mta_layers: list  # MTALayer, in order; empty for a system without MTA
    expert_plan: ExpertPlan | None  # the MTA experts' plan; None without MTA
    backbone_trained: bool  # whether the backbone's own weights are part of what it saves
    label_offsets: dict[str, list[float]]  # per task and label (`capabilities.label_offsets`); empty: none
    trained_in: Path | None  # the run folder of its last training run (its report), once trained
    # The only tasks whose own weights training may change (a task added to a trained model:
    # alter.models.task_surgery); empty: every task. Everything else is held as it is.
    changing_tasks: tuple[str, ...]

    @property
    def capabilities(self) -> Capabilities: ...

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Every parameter in one of: experts, gates, adapters, heads, backbone."""

    def begin_stage(self, stage: StageConfig) -> None:
        """Set the gates for the stage about to train (a system without gates does nothing)."""

    def task_gate_weights(self) -> torch.Tensor:
        """(layers, tasks, experts); empty without gates."""

    def prune_gates(self, kept: int) -> None:
        """Each row keeps its `kept` largest gate weights from now on (`capabilities.gates`)."""

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

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the folder that `alter.load` reads back (`extra` goes into its alter.json)."""

    def load_trained(self, directory: str | Path) -> None:
        """Load the weights that `save` wrote in `directory` into this model."""

    def set_inference(self, quantize: Quantize) -> None:
        """How the pretrained weights compute when the model generates without gradients: from
        int8 copies (`"int8"`) or in float32 (`"none"`). Scoring and training compute in
        float32 either way; nothing of it is saved. A system without pretrained weights (the
        Bi-LSTM) computes in float32 whatever it is told."""


@runtime_checkable
class ServableModel(TrainableModel, Protocol):
    """What the server's Predictor and schedulers need of a model besides training's contract."""

    tokenizer: PreTrainedTokenizerBase
    task_index: dict[str, int]  # task name -> task id

    def generation_settings(self, task_id: int, defaults: GenerationSettings,
                            requested: GenerationSettings | None = None) -> GenerationSettings:
        """How task `task_id` writes: a request's settings over the task's over `defaults`."""

    def predict_encoded(self, rows: Sequence[Encoded], batch_size: int = 16, max_new_tokens: int = 48,
                        num_beams: int = 1, progress: str | None = None,
                        settings: Sequence[GenerationSettings] | None = None) -> list[Prediction]: ...

    def decodes(self, settings: GenerationSettings | None = None) -> bool:
        """Whether `decode_batch` can write under `settings` (else the static path)."""

    def decode_batch(self) -> DecodeBatch:
        """An empty running batch for continuous decoding, which rows join and leave."""
