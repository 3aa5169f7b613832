"""Task-specific heads: text-to-text through the backbone's own LM head, or a small
classifier / regressor per task on the pooled hidden state.

A head turns examples into tensors and computes per-example losses and predictions; every
backbone call it makes runs inside a routing context that carries the rows' task ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig

from alter.config import ModelConfig
from alter.data.collate import IGNORE, Encoded, encode_prompt, encode_target, pad, to_device, token_batch
from alter.data.generation import GenerationSettings
from alter.data.task import Example, Task
from alter.models.contract import Prediction
from alter.models.decoding import generate_kwargs, seeded
from alter.models.quantized import int8_prompts
from alter.mta.routing import routing

Batch = dict[str, Any]


class HeadError(ValueError):
    pass


class DeviceAware(nn.Module):
    """A head that knows its model's device (an LM head may hold no parameter of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # moves with .to()

    @property
    def device(self) -> torch.device:
        return self._anchor.device


def routed(batch: Batch):
    """The routing context for one backbone call on `batch` (task ids, pooling masks)."""
    return routing(batch["task_ids"], batch["pool_masks"])


class LMHead(DeviceAware):
    """Text-to-text: targets are words; classification by rank classification over the
    verbalizer's words; regression by the expected value over score bins; generation."""

    def __init__(self, backbone_config: PretrainedConfig, tasks: Sequence[Task], config: ModelConfig):
        super().__init__()
        if not backbone_config.is_encoder_decoder and backbone_config.model_type in ("bert", "roberta", "xlm-roberta"):
            raise HeadError(f"model.head=lm needs a model that generates; '{backbone_config.model_type}' is an "
                            "encoder: use model.head=classifier")
        self.seq2seq = bool(backbone_config.is_encoder_decoder)
        self.config = config
        self._splits: dict[str, tuple[list[int], list[int]] | None] = {}  # per task, tokenized once
        self._candidates: dict[str, list[list[int]]] = {}

    @staticmethod
    def auto_class(backbone_config: PretrainedConfig) -> type:
        return AutoModelForSeq2SeqLM if backbone_config.is_encoder_decoder else AutoModelForCausalLM

    def task_parameters(self, task_id: int) -> list[nn.Parameter]:
        """A task's own weights in this head: none (every task writes through the backbone's)."""
        return []

    # --- encoding -----------------------------------------------------------------------
    def encode(self, task_id: int, task: Task, example: Example, tokenizer, with_target: bool) -> Encoded:
        prompt, truncated = encode_prompt(tokenizer, task, example.inputs, self.config.source_tokens)
        if not with_target or example.target is None:
            return Encoded(task_id, prompt, truncated=truncated)
        target_ids = encode_target(tokenizer, task.target_text(example), self.config.max_target_length,
                                   not self.seq2seq, end=task.kind == "generation")
        choice = {}
        split = self.cached_split(task, tokenizer)
        if split is not None:
            choice = {"choices": split[1], "choice_offset": len(split[0]),
                      "answer": task.candidate_distribution(example)}
        elif task.candidates:
            if task.name not in self._candidates:
                self._candidates[task.name] = self.candidate_ids(task, tokenizer)
            choice = {"candidates": self._candidates[task.name], "answer": task.candidate_distribution(example)}
        if self.seq2seq:
            return Encoded(task_id, prompt, labels=target_ids, truncated=truncated, **choice)
        return Encoded(task_id, prompt + target_ids, labels=[IGNORE] * len(prompt) + target_ids,
                       truncated=truncated, **choice)

    def cached_split(self, task: Task, tokenizer) -> tuple[list[int], list[int]] | None:
        """`candidate_split`, computed once per task."""
        if task.name not in self._splits:
            self._splits[task.name] = self.candidate_split(task, tokenizer)
        return self._splits[task.name]

    def collate(self, rows: Sequence[Encoded], tokenizer, side: str = "right") -> Batch:
        batch: Batch = token_batch(rows, tokenizer.pad_token_id, side)
        if rows[0].labels is not None:
            batch["labels"] = pad([row.labels for row in rows], IGNORE, side)  # (B, T) or (B, T_target)
            batch["choices"] = [(row.choices, row.choice_offset, row.answer) for row in rows]
            ranked = [index for index, row in enumerate(rows) if row.candidates]
            if ranked:  # every candidate after each such prompt, one row each
                expanded = [self._with_candidate(Encoded(rows[i].task_id, self._prompt_of(rows[i])), ids)
                            for i in ranked for ids in rows[i].candidates]
                batch["candidate_batch"] = self.collate(expanded, tokenizer)
                batch["candidate_answers"] = [(i, rows[i].answer) for i in ranked]
        # An input router pools over the prompt: the tokens that generation sees at prefill.
        prompt = batch["attention_mask"].clone()
        if "labels" in batch and not self.seq2seq:
            prompt &= (batch["labels"] == IGNORE).long()
        batch["pool_masks"] = {"main": prompt}
        if self.seq2seq:  # the decoder's prefill is its start token alone
            width = batch["labels"].shape[1] if "labels" in batch else 1
            batch["pool_masks"]["decoder"] = F.one_hot(torch.zeros(len(rows), dtype=torch.long), width)
        return to_device(batch, self.device)

    # --- losses -------------------------------------------------------------------------
    def target_logits(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at every target position, (N, V); the target tokens, (N,); their rows, (N,).

        Positions come row by row, left to right, so a row's first target comes first.
        """
        labels = batch["labels"]
        if self.seq2seq:
            decoder_ids = backbone.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              decoder_input_ids=decoder_ids).logits  # (B, T_target, V)
            keep = labels != IGNORE  # (B, T_target)
            return logits[keep], labels[keep], keep.nonzero()[:, 0]
        hidden = backbone.base_model(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, d)
        hidden, targets = hidden[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE  # (B, T-1)
        # Only target positions go through the (large) output layer.
        return backbone.get_output_embeddings()(hidden[keep]), targets[keep], keep.nonzero()[:, 0]

    def target_logprobs(self, backbone: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of the log-likelihood of each row's target tokens, and their count; (B,), (B,)."""
        logits, targets, rows = self.target_logits(backbone, batch)
        token_logp = -F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
        size = batch["labels"].shape[0]
        total = torch.zeros(size, device=logits.device).index_add(0, rows, token_logp)
        return total, torch.bincount(rows, minlength=size)

    def losses(self, backbone: nn.Module, batch: Batch, tasks: Sequence[Task]) -> torch.Tensor:
        """Mean token loss of each row; (B,). A row with label words adds the loss of rank
        classification (cross-entropy between its target over the candidates and the model's
        distribution over them), by the rule that predicts, so that training pushes the right
        word above the others, not only up: over the one token that tells them apart where
        there is one, otherwise over each candidate's whole log-likelihood after the prompt."""
        with routed(batch):
            logits, targets, rows = self.target_logits(backbone, batch)
        size = batch["labels"].shape[0]
        token_loss = F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
        count = torch.bincount(rows, minlength=size)  # (B,)
        loss = torch.zeros(size, device=logits.device).index_add(0, rows, token_loss) / count.clamp(min=1)  # (B,)
        first = torch.cumsum(count, 0) - count  # (B,) index of each row's first target position
        for row, (choices, offset, answer) in enumerate(batch["choices"]):
            if choices is not None:
                choice_logp = logits[first[row] + offset, choices].float().log_softmax(-1)  # (C,)
                target = torch.tensor(answer, device=logits.device)  # (C,)
                loss[row] = loss[row] - (target * choice_logp).sum()
        if "candidate_batch" in batch:
            candidates = batch["candidate_batch"]
            with routed(candidates):
                total, _ = self.target_logprobs(backbone, candidates)  # (sum C,) each candidate's log-likelihood
            start = 0
            for row, answer in batch["candidate_answers"]:
                choice_logp = total[start: start + len(answer)].log_softmax(-1)  # (C,)
                start += len(answer)
                loss[row] = loss[row] - (torch.tensor(answer, device=total.device) * choice_logp).sum()
        return loss

    # --- prediction ---------------------------------------------------------------------
    def candidate_ids(self, task: Task, tokenizer) -> list[list[int]]:
        return [encode_target(tokenizer, word, self.config.max_target_length, not self.seq2seq, end=False)
                for word in task.candidates]

    def first_token_logprobs(self, backbone: nn.Module, batch: Batch) -> torch.Tensor:
        """Log-probabilities of the first target token after each prompt; (B, V)."""
        if self.seq2seq:
            start = torch.full((batch["input_ids"].shape[0], 1), backbone.config.decoder_start_token_id,
                               device=batch["input_ids"].device)
            logits = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              decoder_input_ids=start).logits[:, 0]  # (B, V)
        else:
            hidden = backbone.base_model(input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, d)
            last = batch["attention_mask"].sum(1) - 1  # (B,) right padding: last real token
            logits = backbone.get_output_embeddings()(hidden[torch.arange(hidden.shape[0]), last])  # (B, V)
        return logits.float().log_softmax(-1)

    def score(self, backbone: nn.Module, rows: Sequence[Encoded], tasks: Sequence[Task], tokenizer) -> list[Prediction]:
        """Rank classification: the likelihood of each candidate word decides.

        When a task's candidates differ in one token after a prefix they share (" positive" /
        " negative"; " 0" .. " 5" where a tokenizer splits off the space), one forward pass over
        the prompts with that prefix appended scores them all: the prefix's likelihood is the
        same for every candidate and cancels. Otherwise each prompt is repeated with each
        candidate appended and the summed log-likelihoods are compared (one batched pass).
        """
        splits = {task_id: self.cached_split(tasks[task_id], tokenizer) for task_id in {r.task_id for r in rows}}
        if all(split is not None for split in splits.values()):
            # The prefix is marked as target so that an input router pools over the prompt alone.
            extended = rows if self.seq2seq else [
                Encoded(row.task_id, row.input_ids + splits[row.task_id][0],
                        labels=[IGNORE] * len(row.input_ids) + splits[row.task_id][0]) for row in rows]
            batch = self.collate(extended, tokenizer)
            with routed(batch):
                logp = self.first_token_logprobs(backbone, batch)  # (B, V)
            scores = [logp[i, splits[row.task_id][1]] for i, row in enumerate(rows)]
        else:
            candidates = {task_id: self.candidate_ids(tasks[task_id], tokenizer) for task_id in splits}
            expanded = [self._with_candidate(row, ids) for row in rows for ids in candidates[row.task_id]]
            batch = self.collate(expanded, tokenizer)
            with routed(batch):
                total, _ = self.target_logprobs(backbone, batch)  # (sum C,)
            scores, start = [], 0
            for row in rows:
                count = len(candidates[row.task_id])
                scores.append(total[start: start + count])
                start += count
        return [tasks[row.task_id].from_candidate_probs(score.softmax(-1).tolist()) for row, score in zip(rows, scores)]

    def candidate_split(self, task: Task, tokenizer) -> tuple[list[int], list[int]] | None:
        """(the tokens every candidate starts with, the one distinct token each has after
        them), or None when candidates differ otherwise. Encoder-decoders need no prefix."""
        ids = self.candidate_ids(task, tokenizer)
        if not ids:
            return None
        prefix = []
        for tokens in zip(*ids):
            if len(set(tokens)) > 1:
                break
            prefix.append(tokens[0])
        rest = [candidate[len(prefix):] for candidate in ids]
        if (self.seq2seq and prefix) or any(len(tail) != 1 for tail in rest) or len({t[0] for t in rest}) < len(rest):
            return None
        return prefix, [tail[0] for tail in rest]

    def _prompt_of(self, row: Encoded) -> list[int]:
        """The prompt of a training row (a decoder-only row holds its target after it)."""
        return row.input_ids if self.seq2seq else row.input_ids[: row.labels.count(IGNORE)]

    def _with_candidate(self, row: Encoded, candidate: list[int]) -> Encoded:
        if self.seq2seq:
            return Encoded(row.task_id, row.input_ids, labels=candidate)
        return Encoded(row.task_id, row.input_ids + candidate, labels=[IGNORE] * len(row.input_ids) + candidate)

    def generate_ids(self, backbone: nn.Module, rows: Sequence[Encoded], tokenizer,
                     settings: GenerationSettings) -> torch.Tensor:
        """New token ids, (B, new), written as `settings` say (complete: `max_new_tokens` and
        `num_beams` set). Task ids are expanded with the beams by the MTA layers."""
        # Decoder-only models continue the prompt, so prompts are aligned on the right.
        batch = self.collate(rows, tokenizer, side="right" if self.seq2seq else "left")
        # What generate's processors see before the first written token: the decoder's start
        # token, or the (padded) prompt.
        prompt_length = 1 if self.seq2seq else batch["input_ids"].shape[1]
        with routed(batch), seeded(settings), int8_prompts():
            output = backbone.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **generate_kwargs(settings, prompt_length),
            )  # (B, T + new) or (B, new)
        return output if self.seq2seq else output[:, batch["input_ids"].shape[1]:]

    def generate(self, backbone: nn.Module, rows: Sequence[Encoded], tokenizer,
                 settings: GenerationSettings) -> list[Prediction]:
        new_tokens = self.generate_ids(backbone, rows, tokenizer, settings)
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [(text.strip(), {}) for text in texts]


class ClassifierHead(DeviceAware):
    """A linear classifier (or regressor) per task on the pooled hidden state."""

    def __init__(self, backbone_config: PretrainedConfig, tasks: Sequence[Task], config: ModelConfig):
        super().__init__()
        for task in tasks:
            if task.kind == "generation":
                raise HeadError(f"task {task.name} generates text: model.head=classifier cannot; use model.head=lm")
        self.config = config
        decoder_only = not backbone_config.is_encoder_decoder and backbone_config.model_type not in (
            "bert", "roberta", "xlm-roberta")
        self.pooling = config.pooling or ("last" if decoder_only else "mean")
        hidden = backbone_config.hidden_size
        self.dropout = nn.Dropout(0.1)
        self.heads = nn.ModuleDict({task.name: nn.Linear(hidden, task.num_outputs) for task in tasks})
        self.task_names = [task.name for task in tasks]

    @staticmethod
    def auto_class(backbone_config: PretrainedConfig) -> type:
        return AutoModel

    def task_parameters(self, task_id: int) -> list[nn.Parameter]:
        """A task's own weights in this head: its linear classifier / regressor."""
        return list(self.heads[self.task_names[task_id]].parameters())

    def encode(self, task_id: int, task: Task, example: Example, tokenizer, with_target: bool) -> Encoded:
        prompt, truncated = encode_prompt(tokenizer, task, example.inputs, self.config.source_tokens)
        value = task.label_index(example) if with_target and example.target is not None else None
        return Encoded(task_id, prompt, target=value, truncated=truncated)

    def collate(self, rows: Sequence[Encoded], tokenizer) -> Batch:
        """Padded on the right: `outputs` pools by the attention mask (the last position: its sum)."""
        batch: Batch = token_batch(rows, tokenizer.pad_token_id)
        if rows[0].target is not None:
            batch["targets"] = torch.tensor([float(row.target) for row in rows])  # (B,)
        batch["pool_masks"] = {"main": batch["attention_mask"]}
        return to_device(batch, self.device)

    def outputs(self, backbone: nn.Module, batch: Batch) -> list[torch.Tensor]:
        """Each row's head output: class logits (C,) or a score (1,)."""
        encoder = backbone.get_encoder() if backbone.config.is_encoder_decoder else backbone
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"]  # (B, T)
        if self.pooling == "first":
            pooled = hidden[:, 0]
        elif self.pooling == "last":
            pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
        else:
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, d)
        pooled = self.dropout(pooled)
        # Rows of one batch may belong to different tasks: apply each task's head to its rows.
        results: list[torch.Tensor] = [None] * pooled.shape[0]  # type: ignore[list-item]
        for task_id in batch["task_ids"].unique().tolist():
            rows = (batch["task_ids"] == task_id).nonzero()[:, 0]
            out = self.heads[self.task_names[task_id]](pooled[rows])  # (n, C)
            for row, value in zip(rows.tolist(), out):
                results[row] = value
        return results

    def score(self, backbone: nn.Module, rows: Sequence[Encoded], tasks: Sequence[Task], tokenizer) -> list[Prediction]:
        batch = self.collate(rows, tokenizer)
        with routed(batch):
            outputs = self.outputs(backbone, batch)
        predictions = []
        for row, output in zip(rows, outputs):
            task = tasks[row.task_id]
            values = output.float().softmax(-1) if task.kind == "classification" else output.float()
            predictions.append(task.from_head_output(values.tolist()))
        return predictions

    def generate(self, *args: Any, **kwargs: Any) -> list[Prediction]:
        raise HeadError("model.head=classifier cannot generate text; use model.head=lm")

    def losses(self, backbone: nn.Module, batch: Batch, tasks: Sequence[Task]) -> torch.Tensor:
        with routed(batch):
            outputs = self.outputs(backbone, batch)
        losses = []
        for output, task_id, target in zip(outputs, batch["task_ids"].tolist(), batch["targets"]):
            if tasks[task_id].kind == "regression":
                losses.append(F.mse_loss(output[0], target))
            else:
                losses.append(F.cross_entropy(output[None], target.long()[None]))
        return torch.stack(losses)  # (B,)
