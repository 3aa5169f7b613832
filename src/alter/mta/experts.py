"""Expert adapters, stored stacked so that all experts run in one batched matmul.

Three kinds share the gate weights of their MTA layer, `gates` (B, K):
- `BottleneckExperts`: parallel adapters on the FFN input, added to the FFN output.
- `LoRAExpertLinear`: K low-rank updates of one linear layer inside the FFN.
- `FFNCopyExperts`: K full copies of the pretrained FFN that replace it (ALTER's released code).

The low-rank kinds compute, per row, only the experts its gate selects when the gate says
every row weighs at most m < K of them (`TaskGate.most_selected`: one in stage 1, `top_k`,
pruned gates): each row's m experts are gathered and applied in one batched matmul, so a
row costs the same whatever K is (`low_rank_mixture`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class ExpertModule(nn.Module):
    """Base class of experts: `expert_parameters()` form the model's `experts` group."""

    def expert_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


# x (B, L, in), the experts' codes (B, L, K, r) -> per-token weights (B, L, K); see low_rank_mixture
Fuse = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def low_rank_mixture(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, gates: torch.Tensor,
                     selected: torch.Tensor | None, act: nn.Module | None = None,
                     groups: Sequence[torch.Tensor] = (), fuse: Fuse | None = None) -> torch.Tensor:
    """sum_k gates[:, k] * act(x @ first_k) @ second_k.

    x (B, ..., in), first (K, in, r), second (K, r, out), gates (B, K) -> (B, ..., out).
    `selected` (B, m): the experts each row draws on (among them every expert its gate weighs
    non-zero), computed alone; None: every expert, for every row.
    `groups`: groups of expert indices computed on their own and summed in order (experts
    added to a trained model: `ExpertPlan.groups`), so that a row that weighs a later group
    zero gets, to the bit, what the first group alone computed before the addition.
    `fuse`: every expert for every row, weighed per token by fuse(x (B, L, in), codes (B, L, K,
    r)) -> (B, L, K) instead of by `gates` (`ExpertFusion`).
    """
    if fuse is not None and (selected is not None or len(groups) > 1):
        raise ValueError("experts fused by attention are computed together, for every row")
    if selected is None and len(groups) > 1:
        out = None
        for group in groups:  # (k_g,) each
            part = low_rank_mixture(x, first[group], second[group], gates[:, group], None, act)
            out = part if out is None else out + part
        return out
    batch, in_features, out_features = x.shape[0], x.shape[-1], second.shape[-1]
    rank = first.shape[-1]
    flat = x.reshape(batch, -1, in_features).to(first.dtype)  # (B, L, in)
    if selected is None:
        experts = first.shape[0]
        h = flat @ first.permute(1, 0, 2).reshape(in_features, experts * rank)  # (B, L, K*r)
        weights = gates  # (B, K)
    else:
        experts = selected.shape[1]
        first, second = first[selected], second[selected]  # (B, m, in, r), (B, m, r, out)
        h = flat @ first.permute(0, 2, 1, 3).reshape(batch, in_features, experts * rank)  # (B, L, m*r)
        weights = gates.gather(1, selected)  # (B, m)
    if act is not None:
        h = act(h)
    codes = h.view(batch, -1, experts, rank)  # (B, L, m, r)
    per_token = fuse(flat, codes) if fuse is not None else weights[:, None, :]  # (B, L or 1, m)
    h = codes * per_token[..., None].to(h.dtype)  # (B, L, m, r)
    h = h.reshape(batch, -1, experts * rank)
    out = h @ (second.reshape(experts * rank, out_features) if selected is None
               else second.reshape(batch, experts * rank, out_features))  # (B, L, out)
    return out.reshape(*x.shape[:-1], out_features).to(x.dtype)


class ExpertFusion(nn.Module):
    """Per-token weights over the experts of one LoRA layer by attention over their low-rank
    codes: AdapterFusion's idea (Pfeiffer et al., 2021: each task learns, per token, which
    adapters' outputs to draw on), inside the layer. Task t's query of a token x, x W_t (r,),
    scores expert k by <x W_t, x A_k> / sqrt(r); the token's weights are its row of the gate
    plus beta_t times the softmax of the scores over every expert. W and beta start at zero,
    so the model computes what it computed before until a collaboration stage trains them
    with the gates (they are in the `gates` group, one row per task)."""

    def __init__(self, num_tasks: int, in_features: int, rank: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(num_tasks, in_features, rank))
        self.weight = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, x: torch.Tensor, codes: torch.Tensor, gates: torch.Tensor,
                task_ids: torch.Tensor) -> torch.Tensor:
        """x (B, L, in), codes (B, L, K, r), gates (B, K), task_ids (B,) -> weights (B, L, K)."""
        query = torch.bmm(x, self.query[task_ids].to(x.dtype))  # (B, L, r)
        scores = torch.einsum("blr,blkr->blk", query, codes) / codes.shape[-1] ** 0.5  # (B, L, K)
        return gates[:, None, :].to(x.dtype) + self.weight[task_ids, None, None] * scores.softmax(-1)


class ExpertGroups(nn.Module):
    """The groups of expert indices that `low_rank_mixture` computes on their own, as index
    tensors that follow the module's device (not saved: the config says them)."""

    def __init__(self, groups: Sequence[Sequence[int]]):
        super().__init__()
        self.count = len(groups) if len(groups) > 1 else 0
        for i, group in enumerate(groups if self.count else ()):
            self.register_buffer(f"group{i}", torch.tensor(list(group), dtype=torch.long), persistent=False)

    def indices(self) -> list[torch.Tensor]:
        return [getattr(self, f"group{i}") for i in range(self.count)]


class BottleneckExperts(ExpertModule):
    """E_k(x) = up_k(act(down_k(x))); up is zero so a fresh model equals its backbone."""

    def __init__(self, num_experts: int, hidden_size: int, rank: int, dropout: float = 0.0,
                 groups: Sequence[Sequence[int]] = ()):
        super().__init__()
        self.down = nn.Parameter(torch.randn(num_experts, hidden_size, rank) / hidden_size**0.5)
        self.up = nn.Parameter(torch.zeros(num_experts, rank, hidden_size))
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.groups = ExpertGroups(groups)

    def forward(self, x: torch.Tensor, gates: torch.Tensor, selected: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d), gates (B, K), selected (B, m) or None -> sum_k gates[:, k] * E_k(x), (B, T, d)."""
        return low_rank_mixture(self.dropout(x), self.down, self.up, gates, selected, self.act, self.groups.indices())


class GateSlot:
    """Holds the gate weights of the current call, the experts each row selects and, once the
    gates collaborate, each row's task, for the experts of one MTA layer."""

    def __init__(self) -> None:
        self.gates: torch.Tensor | None = None  # (B, K)
        self.selected: torch.Tensor | None = None  # (B, m), or None: every expert
        self.task_ids: torch.Tensor | None = None  # (B,); None under the fixed stage-1 gates


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

    def __init__(self, base: nn.Module, num_experts: int, rank: int, alpha: float, slot: GateSlot, dropout: float,
                 groups: Sequence[Sequence[int]] = (), fusion_tasks: int = 0):
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
        self.groups = ExpertGroups(groups)
        # `mta.fusion`: one attention query per task over the experts (none: the gates alone). Its
        # name is how a stage's `fusion_lr` finds its parameters (alter.training.stages).
        self.fusion = ExpertFusion(fusion_tasks, in_features, rank) if fusion_tasks else None

    def expert_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]  # not the pretrained linear inside, nor the fusion's (gates)

    @property
    def weight(self) -> torch.Tensor:
        # Backbone code reads `.weight` of its linears (e.g. T5 checks its dtype).
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Gate weights (B, K) and selected experts, set by the MTA layer before the FFN runs.
        slot, fuse = self.slot, None
        if self.fusion is not None and slot.task_ids is not None:  # not under the fixed stage-1 gates
            fusion = self.fusion

            def fuse(flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
                return fusion(flat, codes, slot.gates, slot.task_ids)
        delta = low_rank_mixture(self.dropout(x), self.lora_A, self.lora_B, slot.gates, slot.selected,
                                 groups=self.groups.indices(), fuse=fuse)
        return self.base(x) + self.scale * delta  # (B, ..., out)


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
