"""`alter export`: one task of a trained model as a self-contained folder.

Where every adapter is linear in its input (LoRA experts under task-level gates, or a shared
PEFT LoRA) and the head is the backbone's own LM head, the task's adapters fold into the
backbone's weights: W' = W + scale * sum_k g_k(t) A_k B_k. The result is a plain Hugging Face
model, with no extra inference cost, that any `transformers` user loads. Otherwise (bottleneck
or FFN-copy experts, input-dependent gates, classifier heads) the folder holds the alter
checkpoint and a copy of the backbone beside it, loadable with `MTAModel.load` anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from alter.backbones import load_backbone
from alter.model import META_FILE, MTAModel
from alter.mta.experts import LoRAExpertLinear
from alter.shared_lora import ADAPTER

TASK_CARD = "alter-task.json"


def why_not_mergeable(model: MTAModel) -> str | None:
    """None when the model's adapters fold into the backbone weights, else the reason."""
    if model.config.head != "lm":
        return f"the {model.config.head} head is not part of a plain language model"
    if model.config.mta.enabled and model.config.mta.kind != "lora":
        return f"{model.config.mta.kind} experts are not linear maps"
    if any(layer.gate.uses_input for layer in model.mta_layers):
        return "the gates depend on the input"
    return None


def export_task(model: MTAModel, task: str, out: Path) -> dict[str, Any]:
    """Write task `task` of `model` to `out`; returns what was written (its task card)."""
    task_id = model.task_id(task)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    spec = model.tasks[task_id].spec
    reason = why_not_mergeable(model)
    card: dict[str, Any] = {"task": spec.model_dump(mode="json"), "source_backbone": model.config.backbone}
    if reason is None:
        merged = merged_backbone(model, task_id)
        merged.save_pretrained(out)
        model.tokenizer.save_pretrained(out)
        card.update(format="transformers", note="adapters merged into the weights; prompt with the task's template")
    else:
        _copy_checkpoint(model, out)
        card.update(format="alter", note=f"not merged ({reason}): load with alter.model.MTAModel.load")
    (out / TASK_CARD).write_text(json.dumps(card, indent=2))
    return card


@torch.no_grad()
def merged_backbone(model: MTAModel, task_id: int) -> nn.Module:
    """A fresh copy of the backbone with task `task_id`'s adapters added to its weights."""
    plain, _ = load_backbone(model.config.backbone, type(model.backbone))
    if model.backbone_trained:  # fine-tuned weights first; adapters wrap `.base` / `.base_layer`
        state = {name.replace(".base.", ".").replace(".base_layer.", "."): value
                 for name, value in model.backbone.state_dict().items()}
        plain.load_state_dict(state, strict=False)
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
    plain, tokenizer = load_backbone(model.config.backbone, type(model.backbone))
    plain.save_pretrained(out / "backbone")
    tokenizer.save_pretrained(out / "backbone")
    meta = json.loads((out / META_FILE).read_text())
    meta["backbone"] = meta["model"]["backbone"] = "backbone"  # `MTAModel.load` reads it relative to the folder
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
