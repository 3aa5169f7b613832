"""Stages as data: which parameter groups train, and how the gates start."""

from __future__ import annotations

from torch import nn

from alter.config import StageConfig
from alter.models.contract import TrainableModel

# mta.fusion's attention sits at `fusion` in every LoRA layer (alter.mta.experts.LoRAExpertLinear).
FUSION_PARAMETERS = ".fusion."

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


def optimizer_groups(trainable: dict[str, nn.Parameter], stage: StageConfig) -> list[dict]:
    """The optimizer's parameter groups, each with the `lr` that the schedule scales: one
    group at `stage.lr`, or with `stage.fusion_lr` the fusion's parameters in a group of
    their own."""
    if stage.fusion_lr is None:
        return [{"params": list(trainable.values()), "lr": stage.lr}]
    fusion = [param for name, param in trainable.items() if FUSION_PARAMETERS in name]
    if not fusion:
        raise ValueError(f"stage '{stage.label}': fusion_lr is set but no mta.fusion weight trains in it "
                         "(model.mta.fusion: true, in a stage that trains the gates)")
    rest = [param for name, param in trainable.items() if FUSION_PARAMETERS not in name]
    groups = [{"params": rest, "lr": stage.lr},
              {"params": fusion, "lr": stage.fusion_lr}]
    return [group for group in groups if group["params"]]
