"""One PEFT LoRA adapter inside the backbone, shared by every task: the papers' multi-task
model without task modules (hard parameter sharing), and on one task their single-task model.

PEFT injects the adapter in place, so the backbone keeps its class and the heads, the loop
and checkpoints treat it like any other backbone.
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from alter.config import SharedLoraConfig

ADAPTER = "default"


def add_shared_lora(backbone: nn.Module, config: SharedLoraConfig) -> None:
    # PEFT's rule: a target names a module by the end of its path (`value`, `intermediate.dense`).
    names = [name for name, _ in backbone.named_modules()]
    missing = [target for target in config.targets
               if not any(name == target or name.endswith("." + target) for name in names)]
    if missing:
        raise ValueError(f"model.lora.targets: no module named {', '.join(missing)} in this backbone "
                         f"(linear layers it has include: {', '.join(sorted(_linear_names(backbone))[:8])})")
    peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=list(config.targets), bias="none")
    inject_adapter_in_model(peft_config, backbone, adapter_name=ADAPTER)


def shared_lora_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The adapter's own weights (not the pretrained linear layers it wraps)."""
    params: list[nn.Parameter] = []
    for module in backbone.modules():
        if isinstance(module, LoraLayer):
            params += [p for layers in (module.lora_A, module.lora_B) for p in layers.parameters()]
    return params


def _linear_names(backbone: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)}
