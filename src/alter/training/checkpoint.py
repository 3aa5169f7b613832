"""Training state on disk (safetensors + JSON, no pickle): weights, optimizer, step, RNG.

Written to a temporary folder and renamed, so a run killed while saving keeps the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alter.models.contract import TrainableModel


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(directory: Path, model: TrainableModel, optimizer: torch.optim.Optimizer,
                        step: int, extra: dict[str, Any]) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.trained_state().items()}
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": optimizer_meta, **extra}, indent=2))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


TrainingState = tuple[dict[str, torch.Tensor], dict[str, Any]]  # (tensors, the JSON part)


def read_training_state(directory: Path) -> TrainingState:
    return load_file(str(directory / "state.safetensors")), json.loads((directory / "state.json").read_text())


def load_training_state(state: TrainingState, model: TrainableModel,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG; returns the JSON part (with `step`)."""
    tensors, meta = state
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    return meta
