"""One task of a model as a standard PEFT LoRA adapter, for engines that serve many adapters
over one base model (vLLM, LoRAX, TGI) and for `PeftModel.from_pretrained`.

Under a task-level gate, a task's mixture of LoRA experts in one linear layer is itself one
LoRA: scale * sum_k g_k (x A_k) B_k = x [A_1 .. A_K] [g_1 B_1; ..; g_K B_K] * scale, of rank
K x r (experts the task gives weight 0 are left out). A shared PEFT LoRA in the same model
adds its own rank. Every layer is padded with zeros to one rank, so that the adapter has a
single `r` as engines expect, and the scales are folded into B (`lora_alpha = r`: scaling 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from alter.backbones import hub_id, resolve_backbone
from alter.models.mta_model import MTAModel
from alter.models.shared_lora import ADAPTER
from alter.mta.experts import LoRAExpertLinear

WEIGHTS = "adapter_model.safetensors"


def why_not_lora(model: MTAModel) -> str | None:
    """None when each task's adapters are LoRA maps of the language model (so that they merge
    into its weights, or stand as a PEFT adapter), else the reason."""
    if model.config.head != "lm":
        return f"the {model.config.head} head is not part of a language model, which a LoRA adapter extends"
    if model.config.mta.enabled and model.config.mta.kind != "lora":
        return f"{model.config.mta.kind} experts are not LoRA"
    if any(layer.gate.uses_input for layer in model.mta_layers):
        return "the gates depend on the input, so no single adapter stands for the task"
    if model.config.mta.enabled and model.config.mta.fusion:
        return "the experts are fused by attention at every token, so no single adapter stands for the task"
    return None


def why_not_peft(model: MTAModel) -> str | None:
    """None when task adapters of `model` are PEFT LoRA adapters, else why not and what to use."""
    reason = why_not_lora(model)
    if reason:
        return f"{reason}; use --format alter"
    if model.backbone_trained:
        return "the backbone's own weights were trained, which a LoRA adapter cannot carry; use --format transformers"
    if not model.mta_layers and model.config.lora is None:
        return "the model has no adapters to export; use --format transformers"
    return None


@torch.no_grad()
def lora_pieces(model: MTAModel, task_id: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapted linear layer (its path in the backbone): the task's (A (r, in), B (out, r)),
    scales folded into B, at each layer's own rank r."""
    gates = {id(layer.slot): layer.gate(torch.tensor([task_id], device=layer.gate.assignment.device), None)[0]
             for layer in model.mta_layers}  # (K,) per layer
    pieces: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, module in model.backbone.named_modules():
        if isinstance(module, LoRAExpertLinear):
            g = gates[id(module.slot)]
            kept = g.nonzero().flatten()  # experts the task draws on
            experts, in_features, rank = module.lora_A.shape
            a = module.lora_A[kept].permute(0, 2, 1).reshape(-1, in_features)  # (k*r, in)
            b = module.lora_B[kept] * (module.scale * g[kept]).view(-1, 1, 1)  # (k, r, out)
            pieces.setdefault(name, []).append((a, b.reshape(len(kept) * rank, -1).T))  # B: (out, k*r)
        elif isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            b = module.lora_B[ADAPTER].weight * module.scaling[ADAPTER]  # (out, r)
            pieces.setdefault(name, []).append((module.lora_A[ADAPTER].weight, b))
    return {name: (torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts], dim=1))
            for name, parts in pieces.items()}


def export_peft(model: MTAModel, task_id: int, out: Path) -> dict:
    """Write `adapter_config.json` and `adapter_model.safetensors` for the task to `out`;
    returns the adapter's config."""
    reason = why_not_peft(model)
    if reason:
        raise ValueError(f"cannot export as a PEFT adapter: {reason}")
    pieces = lora_pieces(model, task_id)
    rank = max(a.shape[0] for a, _ in pieces.values())
    state = {}
    for name, (a, b) in pieces.items():
        pad = rank - a.shape[0]
        state[f"base_model.model.{name}.lora_A.weight"] = nn.functional.pad(a, (0, 0, 0, pad)).contiguous().cpu()
        state[f"base_model.model.{name}.lora_B.weight"] = nn.functional.pad(b, (0, pad)).contiguous().cpu()
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=_target_modules(model, list(pieces)), lora_dropout=0.0, bias="none",
        fan_in_fan_out=any(_is_conv1d(model.backbone.get_submodule(name)) for name in pieces),
        task_type="SEQ_2_SEQ_LM" if model.backbone.config.is_encoder_decoder else "CAUSAL_LM",
        base_model_name_or_path=_exact_base(model.config.backbone),
        inference_mode=True)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(out / WEIGHTS))
    return json.loads((out / "adapter_config.json").read_text())


def _exact_base(name: str) -> str:
    """The weights the adapter was trained over: a hub id as it is; a built-in name's local
    folder (a packaged GGUF's de-quantized weights differ from the hub model it came from)."""
    return name if hub_id(name) == name else resolve_backbone(name)


def _target_modules(model: MTAModel, adapted: list[str]) -> list[str]:
    """Module names as engines read them: the last part (`q_proj`) when every layer of that
    name is adapted, else the adapted layers' full paths."""
    by_suffix: dict[str, list[str]] = {}
    for name, _ in model.backbone.named_modules():
        by_suffix.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    if all(set(by_suffix[suffix]) <= set(adapted) for suffix in suffixes):
        return suffixes
    return sorted(adapted)


def _is_conv1d(module: nn.Module) -> bool:
    base = getattr(module, "base", None) or getattr(module, "base_layer", None) or module
    return type(base).__name__ == "Conv1D"
