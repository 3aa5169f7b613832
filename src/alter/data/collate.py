"""Examples -> token ids -> padded tensors. Needs only a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from alter.data.task import Example, Task

IGNORE = -100


def encode_prompt(tokenizer: PreTrainedTokenizerBase, task: Task, inputs: dict[str, str],
                  max_length: int) -> tuple[list[int], bool]:
    """Token ids of the task's prompt, at most `max_length`; True when it was truncated.

    The longest input field is shortened (never the instruction around it), so that a long
    dialogue keeps the "Summary:" cue at its end.
    """
    fields = dict(inputs)
    truncated = False
    for _ in range(8):
        ids = tokenizer(task.prompt(fields))["input_ids"]
        excess = len(ids) - max_length
        if excess <= 0:
            return ids, truncated
        truncated = True
        longest = max(fields, key=lambda key: len(fields[key]))
        field_ids = tokenizer(fields[longest], add_special_tokens=False)["input_ids"]
        keep = max(0, len(field_ids) - excess - 1)
        fields[longest] = tokenizer.decode(field_ids[:keep])
    return ids[:max_length], True


def encode_target(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int, leading_space: bool,
                  end: bool) -> list[int]:
    """Target tokens; decoder-only models read them after the prompt's last word.

    Generated text ends with the end-of-sequence token (`end`); a label word does not need
    it: rank classification reads only the word, and the training signal stays on the word.
    """
    ids = tokenizer((" " if leading_space else "") + text, add_special_tokens=False)["input_ids"]
    return ids[: max_length - 1] + [tokenizer.eos_token_id] if end else ids[:max_length]


@dataclass
class Encoded:
    task_id: int
    input_ids: list[int]
    labels: list[int] | None = None  # per token (text-to-text)
    target: int | float | None = None  # class index or score (classifier / regressor heads)
    truncated: bool = False
    # Rank classification in training: the token that tells the candidate words apart, read
    # `choice_offset` target tokens in (after a prefix they share), and the target as
    # probabilities over the candidates.
    choices: list[int] | None = None
    choice_offset: int = 0
    answer: list[float] | None = None
    # Candidates that differ in more than one token: the token ids of each, ranked in training
    # by their whole log-likelihood after the prompt, as prediction ranks them.
    candidates: list[list[int]] | None = None


def pad(rows: Sequence[list[int]], value: int, side: str = "right") -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [
        row + [value] * (width - len(row)) if side == "right" else [value] * (width - len(row)) + row
        for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long)  # (B, T)


def attention_mask(rows: Sequence[list[int]], side: str = "right") -> torch.Tensor:
    return pad([[1] * len(row) for row in rows], 0, side)  # (B, T)


def token_batch(rows: Sequence[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Every head's batch begins so: task ids (B,), token ids and attention mask (B, T), padded
    on `side`."""
    ids = [row.input_ids for row in rows]
    return {"task_ids": torch.tensor([row.task_id for row in rows]),
            "input_ids": pad(ids, pad_id, side),  # (B, T)
            "attention_mask": attention_mask(ids, side)}  # (B, T)


# A batch pads every row to its longest; past this ratio of padded to real tokens, a longer row
# starts a batch of its own. On a CPU a forward pass costs about its padded tokens, so a batch
# of 16 mixed requests (4-word sentences beside 128-token dialogues) pays for the padding, while
# a pass more costs a few milliseconds.
MAX_PADDING = 1.5


def length_batches(indices: Sequence[int], lengths: Sequence[int], batch_size: int,
                   max_padding: float = MAX_PADDING) -> list[list[int]]:
    """`indices` in batches of at most `batch_size`, shortest rows first, a batch closed early
    when its next row would pad it past `max_padding` times its real tokens (`lengths[i]` is
    row i's length). Rows of similar length fill whole batches as before."""
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in sorted(indices, key=lambda i: lengths[i]):
        length = lengths[index]
        full = len(current) == batch_size
        if current and (full or (len(current) + 1) * length > max_padding * (real + length)):
            batches.append(current)
            current, real = [], 0
        current.append(index)
        real += length
    if current:
        batches.append(current)
    return batches


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (in dicts and lists, at any depth) on `device`."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list):
        return [to_device(value, device) for value in batch]
    return batch


def example_lengths(tokenizer: PreTrainedTokenizerBase, task: Task, examples: Sequence[Example]) -> list[int]:
    """Rough token counts for grouping batches by length (one batched tokenizer call)."""
    texts = [task.prompt(example.inputs) for example in examples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
