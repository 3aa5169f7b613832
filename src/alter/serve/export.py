"""`alter export`: one task of a trained model as a self-contained folder.

Where every adapter is linear in its input (LoRA experts under task-level gates, or a shared
PEFT LoRA) and the head is the backbone's own LM head, the task's adapters fold into the
backbone's weights: W' = W + scale * sum_k g_k(t) A_k B_k. The result is a plain Hugging Face
model, with no extra inference cost, that any `transformers` user loads. Otherwise (bottleneck
or FFN-copy experts, input-dependent gates, classifier heads) the folder holds the alter
checkpoint and a copy of the backbone beside it, loadable with `alter.load` anywhere.
`--format peft` writes the task's adapters as one PEFT LoRA adapter instead
(`alter.serve.peft_export`), for engines that serve many adapters over one base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from alter.backbones import plain_backbone
from alter.models.mta_model import MTAModel
from alter.models.shared_lora import ADAPTER
from alter.mta.experts import LoRAExpertLinear
from alter.serve.peft_export import export_peft, why_not_lora

TASK_CARD = "alter-task.json"


FORMATS = ("auto", "transformers", "peft", "alter")


def export_task(model: MTAModel, task: str, out: Path, format: str = "auto") -> dict[str, Any]:  # noqa: A002
    """Write task `task` of `model` to `out` as `format`: `transformers` (adapters merged
    into a plain model), `peft` (a LoRA adapter for the base model), `alter` (the checkpoint
    with its backbone), or `auto` (merged where possible, else alter). Returns the task card."""
    if format not in FORMATS:
        raise ValueError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    task_id = model.task_id(task)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    reason = why_not_lora(model)
    if format == "transformers" and reason:
        raise ValueError(f"cannot merge task {task} into a plain model: {reason}; use --format alter")
    if format == "peft":
        adapter = export_peft(model, task_id, out)
        note = f"a PEFT LoRA adapter of rank {adapter['r']} for {adapter['base_model_name_or_path']}"
    elif format == "alter" or reason:
        out.mkdir(parents=True, exist_ok=True)
        _copy_checkpoint(model, out)
        note = f"not merged ({reason or 'as asked'}): load with alter.load"
        format = "alter"
    else:
        out.mkdir(parents=True, exist_ok=True)
        merged_backbone(model, task_id).save_pretrained(out)
        model.tokenizer.save_pretrained(out)
        note, format = "adapters merged into the weights; prompt with the task's template", "transformers"
    card: dict[str, Any] = {"task": model.tasks[task_id].spec.model_dump(mode="json"),
                            "source_backbone": model.config.backbone, "format": format, "note": note}
    (out / TASK_CARD).write_text(json.dumps(card, indent=2))
    return card


@torch.no_grad()
def merged_backbone(model: MTAModel, task_id: int) -> nn.Module:
    """A fresh copy of the backbone with task `task_id`'s adapters added to its weights."""
    plain = plain_backbone(model.backbone)  # its current weights, fine-tuned ones included
    gates = {id(layer.slot): layer.gate(torch.tensor([task_id]), None)[0] for layer in model.mta_layers}  # (K,)
    for name, module in model.backbone.named_modules():
        if isinstance(module, LoRAExpertLinear):
            g = gates[id(module.slot)]
            delta = module.scale * torch.einsum("k,kir,kro->io", g, module.lora_A, module.lora_B)  # (in, out)
            _add(plain.get_submodule(name), delta)
        elif isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            target = plain.get_submodule(name)
            target.weight += module.get_delta_weight(ADAPTER).to(target.weight.dtype)  # in the weight's layout
    return plain


def _add(target: nn.Module, delta_in_out: torch.Tensor) -> None:
    """Add a (in, out) update to a linear layer (nn.Linear stores (out, in), Conv1D (in, out))."""
    if isinstance(target, nn.Linear):
        target.weight += delta_in_out.T.to(target.weight.dtype)
    else:
        target.weight += delta_in_out.to(target.weight.dtype)


def _copy_checkpoint(model: MTAModel, out: Path) -> None:
    """The alter checkpoint, with the backbone folder copied in beside it."""
    model.save(out)
    model.save_backbone_beside(out)
