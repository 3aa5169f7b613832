"""Configuration of the Mixture-of-Task-Adapters module."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ExpertKind = Literal["bottleneck", "lora", "ffn_copy"]
GateMode = Literal["task", "input", "task+input"]


class MTAConfig(BaseModel):
    """Where MTA layers go and what they hold.

    `num_experts` defaults to the number of tasks (one expert per task in stage 1).
    `layers` lists layer indices of each transformer stack (negative counts from the end),
    or "all".
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    kind: ExpertKind = "bottleneck"
    num_experts: int | None = Field(default=None, ge=1)
    rank: int = Field(default=16, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    layers: Literal["all"] | list[int] = "all"
    gate: GateMode = "task"
    temperature: float = Field(default=1.0, gt=0)
    top_k: int | None = Field(default=None, ge=1)
    shared_expert: bool = False
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # LoRA experts: the linear layers of each block that carry them, as paths inside the block
    # (e.g. [self_attn.q_proj, self_attn.v_proj], where PEFT's LoRA goes); default: the FFN's.
    targets: list[str] | None = None
    # Stage 1 assignment of tasks to experts: one expert per task, tasks grouped by kind
    # (classification / entailment / generation, as ALTER's code groups them), or by hand.
    assignment: Literal["one_per_task", "by_kind"] | dict[str, int] = "one_per_task"
    # Set by `alter add-task`: how many routed experts each group holds that is computed on
    # its own (the experts the model was built with, then one per added task), so that the
    # tasks that were there before compute exactly what they did. None: one group.
    expert_groups: list[int] | None = None

    @model_validator(mode="after")
    def _check_top_k(self) -> MTAConfig:
        if self.top_k is not None and self.num_experts is not None and self.top_k > self.num_experts:
            raise ValueError(f"mta.top_k ({self.top_k}) exceeds mta.num_experts ({self.num_experts})")
        if self.expert_groups is not None and (min(self.expert_groups, default=0) < 1 or (
                self.num_experts is not None and sum(self.expert_groups) != self.num_experts)):
            raise ValueError(f"mta.expert_groups {self.expert_groups}: positive sizes that add up to "
                             f"mta.num_experts ({self.num_experts})")
        if self.targets is not None and (self.kind != "lora" or not self.targets):
            raise ValueError("mta.targets names the linear layers of LoRA experts: set mta.kind=lora "
                             "and at least one layer")
        return self
