"""Expert adapters, stored stacked so that all experts run in one batched matmul.

Three kinds share the gate weights of their MTA layer, `gates` (B, K):
- `BottleneckExperts`: parallel adapters on the FFN input, added to the FFN output.
- `LoRAExpertLinear`: K low-rank updates of one linear layer inside the FFN.
- `FFNCopyExperts`: K full copies of the pretrained FFN that replace it (ALTER's released code).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class ExpertModule(nn.Module):
    """Base class of experts: `expert_parameters()` form the model's `experts` group."""

    def expert_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


class BottleneckExperts(ExpertModule):
    """E_k(x) = up_k(act(down_k(x))); up is zero so a fresh model equals its backbone."""

    def __init__(self, num_experts: int, hidden_size: int, rank: int, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Parameter(torch.randn(num_experts, hidden_size, rank) / hidden_size**0.5)
        self.up = nn.Parameter(torch.zeros(num_experts, rank, hidden_size))
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), gates (B, K) -> sum_k gates[:, k] * E_k(x), (B, T, d)."""
        batch, length, hidden = x.shape
        experts, _, rank = self.down.shape
        down = self.down.permute(1, 0, 2).reshape(hidden, experts * rank)  # (d, K*r)
        h = self.act(self.dropout(x).to(down.dtype) @ down)  # (B, T, K*r)
        h = h.view(batch, length, experts, rank) * gates[:, None, :, None].to(h.dtype)  # (B, T, K, r)
        out = h.reshape(batch, length, experts * rank) @ self.up.reshape(experts * rank, hidden)
        return out.to(x.dtype)  # (B, T, d)


class GateSlot:
    """Holds the gate weights of the current call for the LoRA experts of one MTA layer."""

    def __init__(self) -> None:
        self.gates: torch.Tensor | None = None


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of nn.Linear or GPT-2's Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2 and type(module).__name__ == "Conv1D":
        return weight.shape[0], weight.shape[1]  # Conv1D stores (in, out)
    raise TypeError(f"LoRA experts need a linear layer, got {type(module).__name__}")


class LoRAExpertLinear(ExpertModule):
    """base(x) + scale * sum_k g_k B_k A_k x, with B zero-initialised."""

    def __init__(self, base: nn.Module, num_experts: int, rank: int, alpha: float, slot: GateSlot, dropout: float):
        super().__init__()
        in_features, out_features = linear_shape(base)
        self.base = base
        # PEFT's start (kaiming_uniform with a=sqrt(5) on its (r, in) weight: U(-1/sqrt(in),
        # 1/sqrt(in))), so that task experts and the PEFT LoRA baselines they are compared with
        # take steps of the same size at the same learning rate.
        bound = 1.0 / in_features**0.5
        self.lora_A = nn.Parameter(torch.empty(num_experts, in_features, rank).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, rank, out_features))
        self.scale = alpha / rank
        self.slot = slot
        self.dropout = nn.Dropout(dropout)

    def expert_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]  # not the pretrained linear inside

    @property
    def weight(self) -> torch.Tensor:
        # Backbone code reads `.weight` of its linears (e.g. T5 checks its dtype).
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.slot.gates  # (B, K), set by the MTA layer before the FFN runs
        experts, in_features, rank = self.lora_A.shape
        lead = x.shape[:-1]
        a = self.lora_A.permute(1, 0, 2).reshape(in_features, experts * rank)  # (in, K*r)
        h = (self.dropout(x) @ a).view(*lead, experts, rank)  # (B, ..., K, r)
        gate_shape = (gates.shape[0],) + (1,) * (len(lead) - 1) + (experts, 1)
        h = h * gates.view(gate_shape).to(h.dtype)  # (B, ..., K, r)
        delta = h.reshape(*lead, experts * rank) @ self.lora_B.reshape(experts * rank, -1)  # (B, ..., out)
        return self.base(x) + self.scale * delta


class FFNCopyExperts(ExpertModule):
    """K copies of a pretrained FFN, run together with torch.func.vmap (no loop over experts)."""

    def __init__(self, ffn: nn.Module, num_experts: int):
        super().__init__()
        copies = [copy.deepcopy(ffn) for _ in range(num_experts)]
        params, buffers = stack_module_state(copies)  # each (K, ...)
        self._names = sorted(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name]) for name in self._names])
        self._buffers_stacked = buffers
        # A stateless template: functional_call swaps the stacked slices in.
        self._template = [copy.deepcopy(ffn).to("meta")]

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), gates (B, K) -> (B, T, d)."""
        template = self._template[0]

        def one_copy(params: dict, buffers: dict) -> torch.Tensor:
            return functional_call(template, (params, buffers), (x,))

        params = dict(zip(self._names, self.stacked))
        outputs = vmap(one_copy)(params, self._buffers_stacked)  # (K, B, T, d)
        return torch.einsum("kbtd,bk->btd", outputs, gates.to(outputs.dtype))
