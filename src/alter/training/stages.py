"""Stages as data: which parameter groups train, and how the gates start."""

from __future__ import annotations

from torch import nn

from alter.config import StageConfig
from alter.models.contract import TrainableModel

STAGE_GROUPS: dict[str, set[str]] = {
    "stage1": {"experts", "adapters", "heads"},  # specialise: each task trains its own expert
    "stage2": {"gates"},  # collaborate: only how tasks draw on each other's experts
    "joint": {"experts", "gates", "adapters", "heads"},  # one stage, everything at once
}


def trainable_groups(stage: StageConfig) -> set[str]:
    groups = set(STAGE_GROUPS[stage.kind])
    if stage.train_heads is not None:
        groups = groups | {"heads"} if stage.train_heads else groups - {"heads"}
    if stage.train_backbone:
        groups.add("backbone")
    return groups


def prepare_stage(model: TrainableModel, stage: StageConfig) -> dict[str, nn.Parameter]:
    """Set the gate mode and `requires_grad`; returns the trainable parameters by name."""
    model.begin_stage(stage)
    groups = model.param_groups()
    wanted = trainable_groups(stage)
    trainable: dict[str, nn.Parameter] = {}
    for group, params in groups.items():
        for name, param in params.items():
            param.requires_grad_(group in wanted)
            if group in wanted:
                trainable[name] = param
    if "backbone" in wanted:
        model.backbone_trained = True
    if not trainable:
        raise ValueError(f"stage '{stage.label}' has nothing to train (groups {sorted(wanted)} are empty)")
    return trainable
