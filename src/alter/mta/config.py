"""Configuration of the Mixture-of-Task-Adapters module."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ExpertKind = Literal["bottleneck", "lora", "ffn_copy"]
GateMode = Literal["task", "input", "task+input"]


# Where another kind's defaults differ from LoRA's: the settings each was measured with.
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "bottleneck": {"rank": 16, "shared_expert": False},
    "ffn_copy": {"shared_expert": False},
}


class MTAConfig(BaseModel):
    """Where MTA layers go and what they hold.

    `num_experts` defaults to the number of tasks (one expert per task in stage 1).
    `layers` lists layer indices of each transformer stack (negative counts from the end),
    or "all".

    The defaults are the design docs/results.md measured best on SmolLM2-135M ("Transfer: what
    makes task experts pay"): a LoRA expert of rank 8 per task on the attention's query and
    value in every layer, beside a shared expert that serves every task (with the stages'
    `expert_lr: auto`, each expert steps by the share of rows it serves). `rank` and
    `shared_expert` default by kind: bottleneck experts keep rank 16 and no shared expert,
    the settings they were measured with; an FFN copy has no shared expert.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    kind: ExpertKind = "lora"
    num_experts: int | None = Field(default=None, ge=1)
    rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    layers: Literal["all"] | list[int] = "all"
    gate: GateMode = "task"
    temperature: float = Field(default=1.0, gt=0)
    top_k: int | None = Field(default=None, ge=1)
    shared_expert: bool = True
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # LoRA experts: the linear layers of each block that carry them: `attention`, the
    # attention's query and value (PEFT's LoRA targets for the backbone's family), `ffn`, the
    # FFN's linear layers, or paths inside the block (e.g. [self_attn.q_proj, mlp.down_proj]).
    targets: Literal["attention", "ffn"] | list[str] = "attention"
    # LoRA experts also weigh each other per token, by an attention of each task over their
    # low-rank codes (AdapterFusion-style, `ExpertFusion`), trained with the gates after stage 1.
    fusion: bool = False
    # Stage 1 assignment of tasks to experts: one expert per task, tasks grouped by kind
    # (classification / entailment / generation, as ALTER's code groups them), or by hand.
    assignment: Literal["one_per_task", "by_kind"] | dict[str, int] = "one_per_task"
    # Set by `alter add-task`: how many routed experts each group holds that is computed on
    # its own (the experts the model was built with, then one per added task), so that the
    # tasks that were there before compute exactly what they did. None: one group.
    expert_groups: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults_by_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {**_KIND_DEFAULTS.get(data.get("kind", "lora"), {}), **data}
        return data

    @field_validator("targets", mode="before")
    @classmethod
    def _unset_targets_meant_ffn(cls, targets: Any) -> Any:
        # Configs and saved models written before `attention` was the default say `null` for
        # the FFN's layers.
        return "ffn" if targets is None else targets

    @model_validator(mode="after")
    def _check_top_k(self) -> MTAConfig:
        if self.top_k is not None and self.num_experts is not None and self.top_k > self.num_experts:
            raise ValueError(f"mta.top_k ({self.top_k}) exceeds mta.num_experts ({self.num_experts})")
        if self.expert_groups is not None and (min(self.expert_groups, default=0) < 1 or (
                self.num_experts is not None and sum(self.expert_groups) != self.num_experts)):
            raise ValueError(f"mta.expert_groups {self.expert_groups}: positive sizes that add up to "
                             f"mta.num_experts ({self.num_experts})")
        if self.fusion and (self.kind != "lora" or self.top_k is not None):
            raise ValueError("mta.fusion attends over the codes of LoRA experts, every expert for every token: "
                             "set mta.kind=lora and no mta.top_k")
        if isinstance(self.targets, list) and (self.kind != "lora" or not self.targets):
            raise ValueError("mta.targets names the linear layers of LoRA experts: set mta.kind=lora "
                             "and at least one layer")
        return self
