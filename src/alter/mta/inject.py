"""Find each block's feed-forward sublayer in a Hugging Face backbone and attach MTA layers.

One small map per model family names the block lists and, inside a block, the FFN's first
and last modules; LoRA experts on the attention go where PEFT puts LoRA for the family (its
query and value layers). Nothing of the backbone's code is changed: MTA layers are added as
child modules named `mta` of their blocks and run from forward hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_LORA_TARGETS
from torch import nn

from alter.mta.config import MTAConfig
from alter.mta.experts import BottleneckExperts, FFNCopyExperts, LoRAExpertLinear, linear_shape
from alter.mta.layer import FFNCopies, MTALayer
from alter.mta.plan import ExpertPlan


class UnsupportedBackboneError(ValueError):
    pass


@dataclass(frozen=True)
class FFNMap:
    stacks: dict[str, str]  # stack name -> dotted suffix of its block list
    ffn_in: str  # module whose input is the FFN input x (path inside a block, -1 = last)
    ffn_out: str  # module whose output is FFN(x), before residual and normalisation
    lora_targets: tuple[str, ...] = ()  # linear layers for LoRA experts; () = all inside ffn_in

    @property
    def single_module(self) -> bool:
        return self.ffn_in == self.ffn_out


_LLAMA_LIKE = FFNMap(stacks={"main": "layers"}, ffn_in="mlp", ffn_out="mlp")
_SEQ2SEQ_T5 = FFNMap(
    stacks={"main": "encoder.block", "decoder": "decoder.block"},
    ffn_in="layer.-1.DenseReluDense", ffn_out="layer.-1.DenseReluDense",
)
FAMILIES: dict[str, FFNMap] = {
    **{name: _LLAMA_LIKE for name in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo2")},
    "gpt2": FFNMap(stacks={"main": "h"}, ffn_in="mlp", ffn_out="mlp"),
    "t5": _SEQ2SEQ_T5,
    "mt5": _SEQ2SEQ_T5,
    "bart": FFNMap(
        stacks={"main": "encoder.layers", "decoder": "decoder.layers"},
        ffn_in="fc1", ffn_out="fc2", lora_targets=("fc1", "fc2"),
    ),
    **{name: FFNMap(
        stacks={"main": "encoder.layer"}, ffn_in="intermediate", ffn_out="output.dense",
        lora_targets=("intermediate.dense", "output.dense"),
    ) for name in ("bert", "roberta", "xlm-roberta")},
}


def _resolve(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _resolve(root, parent_path) if parent_path else root
    if name.lstrip("-").isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def _block_list(backbone: nn.Module, suffix: str) -> nn.ModuleList | None:
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
            return module
    return None


def _selected_layers(count: int, wanted: str | list[int]) -> list[int]:
    if wanted == "all":
        return list(range(count))
    chosen = []
    for index in wanted:
        if not -count <= index < count:
            raise ValueError(f"mta.layers: layer {index} does not exist (the stack has {count} layers)")
        chosen.append(index % count)
    return sorted(set(chosen))


def ffn_map(model_type: str) -> FFNMap:
    if model_type not in FAMILIES:
        raise UnsupportedBackboneError(
            f"no MTA placement known for model type '{model_type}'; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def inject_mta(backbone: nn.Module, config: MTAConfig, plan: ExpertPlan) -> list[MTALayer]:
    """Attach one MTA layer to each selected block; returns the layers in order."""
    model_type = backbone.config.model_type
    family = ffn_map(model_type)
    hidden_size = backbone.config.hidden_size
    num_experts = plan.total
    if config.kind == "ffn_copy" and len(plan.groups) > 1:
        raise ValueError("mta.kind=ffn_copy computes its experts together: experts cannot be added to it")
    if config.kind == "ffn_copy" and (config.shared_expert or not family.single_module):
        raise ValueError(
            "mta.kind=ffn_copy needs an FFN that is one module and no shared expert "
            f"(model type '{model_type}', shared_expert={config.shared_expert})"
        )
    layers: list[MTALayer] = []
    for stack, suffix in family.stacks.items():
        blocks = _block_list(backbone, suffix)
        if blocks is None:  # e.g. an encoder-only view of an encoder-decoder model
            continue
        for block_index in _selected_layers(len(blocks), config.layers):
            block = blocks[block_index]
            layer = MTALayer(len(layers), stack, block_index, hidden_size, plan, config)
            block.add_module("mta", layer)
            _attach(layer, block, family, model_type, hidden_size, num_experts, config, plan.groups, plan.num_tasks)
            layers.append(layer)
    if not layers:
        raise UnsupportedBackboneError(f"found no transformer blocks in {type(backbone).__name__}")
    return layers


def _attach(layer: MTALayer, block: nn.Module, family: FFNMap, model_type: str, hidden_size: int,
            num_experts: int, config: MTAConfig, expert_groups: list[list[int]], num_tasks: int) -> None:
    if config.kind == "ffn_copy":
        layer.experts = FFNCopyExperts(_resolve(block, family.ffn_in), num_experts)
        _replace(block, family.ffn_in, FFNCopies(layer))
        return
    if config.kind == "bottleneck":
        layer.experts = BottleneckExperts(num_experts, hidden_size, config.rank, config.dropout, expert_groups)
        _resolve(block, family.ffn_out).register_forward_hook(layer.after_ffn)
    else:  # LoRA experts live inside linear layers (the attention's by default), reading the layer's gate slot.
        for path in lora_target_paths(block, family, model_type, config.targets):
            try:
                base = _resolve(block, path)
            except (AttributeError, IndexError):
                linears = [name for name, module in block.named_modules() if name and _is_linear(module)]
                raise UnsupportedBackboneError(f"mta.targets: no layer '{path}' in a {type(block).__name__}; "
                                               f"its linear layers: {', '.join(linears)}") from None
            _replace(block, path, LoRAExpertLinear(base, num_experts, config.rank, config.lora_alpha,
                                                   layer.slot, config.dropout, expert_groups,
                                                   fusion_tasks=num_tasks if config.fusion else 0))
        if config.targets != "ffn":  # experts outside the FFN (e.g. in attention): gates before the block runs
            block.register_forward_pre_hook(layer.before_experts, with_kwargs=True)
            return
    # Registered last, on the module that now stands at ffn_in (a LoRA wrapper may have replaced it).
    _resolve(block, family.ffn_in).register_forward_pre_hook(layer.before_experts, with_kwargs=True)


def lora_target_paths(block: nn.Module, family: FFNMap, model_type: str,
                      targets: str | list[str]) -> tuple[str, ...]:
    """Paths inside `block` of the linear layers that LoRA experts wrap (`mta.targets`)."""
    if isinstance(targets, list):
        return tuple(targets)
    if targets == "ffn":
        ffn = _resolve(block, family.ffn_in)
        return family.lora_targets or tuple(
            f"{family.ffn_in}.{name}" for name, module in ffn.named_modules() if name and _is_linear(module))
    # PEFT names the layers by their last name (q_proj, v_proj; query, value; GPT-2's fused c_attn);
    # the Llama-like families it does not list yet use Llama's names.
    names = set(PEFT_LORA_TARGETS.get(model_type) or ("q_proj", "v_proj"))
    paths = tuple(path for path, module in block.named_modules()
                  if path.rpartition(".")[2] in names and _is_linear(module))
    if not paths:
        raise UnsupportedBackboneError(f"mta.targets=attention: no layer named {', '.join(sorted(names))} in a "
                                       f"{type(block).__name__}; name the layers in mta.targets")
    return paths


def _is_linear(module: nn.Module) -> bool:
    try:
        linear_shape(module)
    except TypeError:
        return False
    return True
