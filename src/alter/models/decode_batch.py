"""Iteration-level ("continuous") decoding: a batch of generating rows that advances one
token at a time, which new rows join after their prefill and finished rows leave at once.

The backbone runs its own forward with a transformers `DynamicCache`; nothing of its code is
copied. Rows are aligned on the right (left padding), as `generate` aligns a decoder-only
batch: a joining row's keys and values are padded on the left to the batch's length, its
attention mask says which positions are real, and every row's position ids count its own
real tokens. Each row keeps its task id (the MTA gates route by it) and, for gates that read
the input, the pooled prompt its gates saw at prefill.

Each row writes under its own generation settings: plain greedy rows take the batch's
argmax, a row with repetition controls or sampling its `TokenChooser`'s choice (the same
processors and seeded draws as `generate`, so it writes what the static path writes). Beam
search and encoder-decoder or sliding-window backbones are for the static path (`MTAModel.decodes`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from alter.data.collate import Encoded, attention_mask, pad
from alter.data.generation import GenerationSettings
from alter.models.decoding import TokenChooser
from alter.models.quantized import int8_prompts
from alter.mta.routing import routing


@dataclass
class Generating:
    """One row being written: its prompt, its settings (`max_new_tokens` set) and what it has
    written so far."""

    row: Encoded
    settings: GenerationSettings
    on_token: Callable[[Generating], None] | None = None  # after every new token (streaming)
    on_done: Callable[[Generating], None] | None = None
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False  # set from outside (a client left): the row leaves at the next step
    streamed: str = ""  # the text sent so far, for a streamed row
    chooser: TokenChooser | None = None  # set on joining, unless the row is plain greedy


class DecodeBatch:
    def __init__(self, backbone: nn.Module, mta_layers: Sequence, pad_id: int, eos_id: int):
        self.backbone, self.pad_id, self.eos_id = backbone, pad_id, eos_id
        self.pooling_layers = [layer.index for layer in mta_layers if layer.gate.uses_input]
        # transformers 5.x names the cache argument `cache` (`past_key_values` goes in 5.40).
        parameters = inspect.signature(backbone.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        # A prefill needs the logits of its last position only (as in `generate`): the LM head
        # over every prompt position would be a fifth of a SmolLM2 prefill's work.
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.rows: list[Generating] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (B, T): 1 where a position is real
        self.last = torch.zeros(0, dtype=torch.long)  # (B,) each row's newest token
        self.pooled: dict[int, torch.Tensor] = {}  # MTA layer -> (B, d) pooled prompt

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def join(self, new: Sequence[Generating]) -> None:
        """Prefill `new` rows together, take their first token, and add them to the batch."""
        if not new:
            return
        ids = [entry.row.input_ids for entry in new]
        input_ids = pad(ids, self.pad_id, "left").to(self.device)  # (n, T)
        mask = attention_mask(ids, "left").to(self.device)  # (n, T)
        task_ids = torch.tensor([entry.row.task_id for entry in new], device=self.device)
        with routing(task_ids, {"main": mask}) as context, int8_prompts():
            output = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=_positions(mask),
                                   use_cache=True, **self.last_logits_only)
            pooled = {index: context.pooled_cache[index] for index in self.pooling_layers}
        for entry in new:
            if not entry.settings.greedy_only:
                entry.chooser = TokenChooser(entry.settings, self.device)
        first = self._choose(new, output.logits[:, -1])  # (n,)
        self._merge(list(new), _cache_of(output), mask, first, pooled)
        self._advance(first, start=len(self.rows) - len(new))

    @torch.no_grad()
    def step(self) -> None:
        """Every running row writes one more token; finished rows leave."""
        self._drop([i for i, entry in enumerate(self.rows) if entry.cancelled])
        if not self.rows:
            return
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)  # (B, T + 1)
        task_ids = torch.tensor([entry.row.task_id for entry in self.rows], device=self.device)
        with routing(task_ids) as context:
            context.pooled_cache.update(self.pooled)  # what each row's input gates saw at prefill
            output = self.backbone(input_ids=self.last[:, None], attention_mask=self.mask,
                                   position_ids=self.mask.sum(1, keepdim=True) - 1, use_cache=True,
                                   **{self.cache_argument: self.cache})
        self.cache = _cache_of(output)
        self.last = self._choose(self.rows, output.logits[:, -1])  # (B,)
        self._advance(self.last)

    @staticmethod
    def _choose(rows: Sequence[Generating], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (B,) from its logits (B, V): the argmax, or its chooser's pick."""
        tokens = logits.argmax(-1)
        for i, entry in enumerate(rows):
            if entry.chooser is not None:
                tokens[i] = entry.chooser(entry.tokens, logits[i])
        return tokens

    def _advance(self, tokens: torch.Tensor, start: int = 0) -> None:
        """Record the new tokens (n,) of rows `start`...; rows that wrote the end token or
        their budget leave."""
        finished = []
        for index, (entry, token) in enumerate(zip(self.rows[start:], tokens.tolist()), start=start):
            if token != self.eos_id:
                entry.tokens.append(token)
                if entry.on_token:
                    entry.on_token(entry)
            if token == self.eos_id or len(entry.tokens) >= entry.settings.max_new_tokens or entry.cancelled:
                finished.append(index)
        for index in finished:
            if self.rows[index].on_done and not self.rows[index].cancelled:
                self.rows[index].on_done(self.rows[index])
        self._drop(finished)

    def _drop(self, indices: list[int]) -> None:
        if not indices:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.mask, self.last, self.pooled = None, self.mask[:0, :0], self.last[:0], {}
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        # Positions that every remaining row pads are dropped, so the batch does not stay long.
        self.mask, self.last = self.mask[index], self.last[index]
        self.pooled = {layer: pooled[index] for layer, pooled in self.pooled.items()}
        unused = int((self.mask.sum(0) == 0).long().cumprod(0).sum())
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def _merge(self, new: list[Generating], cache: DynamicCache, mask: torch.Tensor, first: torch.Tensor,
               pooled: dict[int, torch.Tensor]) -> None:
        """Append prefilled rows (their cache, mask (n, T'), first tokens (n,)) to the batch."""
        if self.cache is None:
            self.rows, self.cache, self.mask, self.last, self.pooled = new, cache, mask, first, pooled
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])  # (B + n, H, T, D)
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])  # (B + n, T)
        self.last = torch.cat([self.last, first])
        self.pooled = {layer: torch.cat([self.pooled[layer], pooled[layer]]) for layer in self.pooled}
        self.rows = self.rows + new


def _cache_of(output) -> DynamicCache:
    """The key/value cache a forward returned (`cache` in transformers 5.x, else `past_key_values`)."""
    cache = output.get("cache")
    return cache if cache is not None else output.get("past_key_values")


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, (B, T): each row counts its own real tokens."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the time axis (dim 2 of keys/values (B, H, T, D), dim 1 of a mask)."""
    dim = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
