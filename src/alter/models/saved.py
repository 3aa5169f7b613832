"""A saved model's folder: what it holds and how a wrong path is told apart from a bad folder.

    trained.safetensors   what training changed (experts, gates, adapters, heads; the backbone
                          when it was trained)
    alter.json            the model config, the tasks and how the weights were made
    README.md             the model card (`save_pretrained`); loading never reads it
    backbone/             the backbone itself, when it has no name to load it by
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alter.config import ModelConfig
from alter.data.spec import TaskSpec
from alter.data.task import Task

WEIGHTS_FILE = "trained.safetensors"
META_FILE = "alter.json"
BACKBONE_FOLDER = "backbone"
FORMAT = 1  # of alter.json


@dataclass(frozen=True)
class SavedFolder:
    """What `read_saved` found in a saved folder, before any weights are loaded."""

    meta: dict[str, Any]  # alter.json as written
    config: ModelConfig
    tasks: list[Task]

    @property
    def architecture(self) -> str:
        return self.meta.get("architecture", "transformer")  # folders before the Bi-LSTM name none


def write_saved(directory: str | Path, architecture: str, config: ModelConfig, tasks: Sequence[Task],
                state: dict[str, torch.Tensor], **fields: Any) -> Path:
    """Write `state` (the trained weights) and `alter.json` (the architecture, model config,
    tasks in order and `fields`) into `directory`; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / WEIGHTS_FILE))
    meta = {"format": FORMAT, "architecture": architecture, "backbone": config.backbone,
            "model": config.model_dump(mode="json"), "tasks": [task.spec.model_dump(mode="json") for task in tasks],
            **fields}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


# alter.json holds every field of the MTA config it was written with; a field it lacks is one
# added since, and the folder was made by code that behaved as these values do (the defaults
# before the LoRA-on-attention design became the default).
_MTA_BEFORE_FIELDS = {"kind": "bottleneck", "rank": 16, "shared_expert": False, "targets": "ffn"}


def read_saved(directory: str | Path) -> SavedFolder:
    """The folder's `alter.json`, its model config and its tasks; see `read_meta` for the errors."""
    meta = read_meta(Path(directory))
    tasks = [Task(TaskSpec.model_validate(spec)) for spec in meta["tasks"]]
    model = dict(meta["model"])
    if isinstance(model.get("mta"), dict):
        model["mta"] = {**_MTA_BEFORE_FIELDS, **model["mta"]}
    return SavedFolder(meta, ModelConfig.model_validate(model), tasks)


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory) / WEIGHTS_FILE))


def read_meta(directory: Path) -> dict[str, Any]:
    """The folder's `alter.json`; a missing path, or a run folder given instead of the model
    inside it, gets a message with the path to use."""
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint not found: {directory}")
    meta_path = directory / META_FILE
    if not meta_path.exists():
        inside = directory / "model" / META_FILE
        if inside.exists():
            raise FileNotFoundError(f"{directory} is a training run's folder; its model is {directory / 'model'}")
        raise FileNotFoundError(f"{directory} is not an alter checkpoint (no {META_FILE})")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def point_at_backbone_beside(directory: Path) -> None:
    """Make the checkpoint in `directory` load the backbone saved in its `backbone/` folder."""
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["backbone"] = meta["model"]["backbone"] = BACKBONE_FOLDER  # read relative to the folder
    meta_path.write_text(json.dumps(meta, indent=2))
