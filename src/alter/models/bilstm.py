"""A Bi-LSTM with attention, trained from scratch: the papers' non-pretrained baseline.

Classification and regression: embeddings -> one bidirectional LSTM layer -> additive
attention pooling -> a linear head per task. Summaries: the same encoder and an LSTM decoder
with dot-product (Luong) attention over the encoder states, decoded greedily, its output
layer tied to the embeddings. Tokens come from the backbone's tokenizer: its vocabulary
only, no pretrained weights.

The model implements `alter.models.contract.TrainableModel` (encode, forward -> per-example losses,
predict, parameter groups, save, load), so the one training loop and evaluator run it. All its
weights form the `backbone` group: a stage trains them with `train_backbone: true`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from alter.backbones import load_tokenizer
from alter.config import ModelConfig, StageConfig
from alter.data.collate import IGNORE, Encoded, attention_mask, pad
from alter.data.task import Example, Task
from alter.models.contract import Capabilities, Prediction
from alter.models.quantized import Quantize
from alter.models.saved import SavedFolder, read_weights, write_saved


class BiLSTMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(default=128, ge=8)
    hidden: int = Field(default=128, ge=8)  # per direction
    dropout: float = Field(default=0.1, ge=0, lt=1)


class BiLSTMModel(nn.Module):
    def __init__(self, config: ModelConfig, tasks: Sequence[Task], lstm: BiLSTMConfig | None = None):
        super().__init__()
        lstm = lstm or BiLSTMConfig()
        self.config, self.lstm_config = config, lstm
        self.tasks = list(tasks)
        self.task_index = {task.name: i for i, task in enumerate(self.tasks)}
        self.tokenizer = load_tokenizer(config.backbone)
        self.eos = self.tokenizer.eos_token_id
        width = 2 * lstm.hidden  # both directions
        self.embed = nn.Embedding(len(self.tokenizer), lstm.embed_dim, padding_idx=self.tokenizer.pad_token_id)
        self.dropout = nn.Dropout(lstm.dropout)
        self.encoder = nn.LSTM(lstm.embed_dim, lstm.hidden, batch_first=True, bidirectional=True)
        self.attention = nn.Sequential(nn.Linear(width, lstm.hidden), nn.Tanh(), nn.Linear(lstm.hidden, 1))
        self.heads = nn.ModuleDict({task.name: nn.Linear(width, task.num_outputs)
                                    for task in self.tasks if task.kind != "generation"})
        if any(task.kind == "generation" for task in self.tasks):
            self.bridge = nn.Linear(width, width)  # pooled encoder state -> decoder's first state
            self.decoder = nn.LSTM(lstm.embed_dim, width, batch_first=True)
            self.combine = nn.Linear(2 * width, lstm.embed_dim)  # [decoder state; context] -> output
        self.mta_layers: list = []
        self.expert_plan = None
        self.backbone_trained = True
        self.label_offsets: dict[str, list[float]] = {}  # none: its decisions are its argmax
        self.trained_in: Path | None = None
        self.changing_tasks: tuple[str, ...] = ()  # every weight is every task's: nothing to hold apart

    capabilities = Capabilities()  # no gates, no label offsets, not served

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    # --- the interface of the training loop ---------------------------------------------
    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        return {"experts": {}, "gates": {}, "adapters": {}, "heads": {}, "backbone": dict(self.named_parameters())}

    def begin_stage(self, stage: StageConfig) -> None:
        """No gates to set."""

    def task_gate_weights(self) -> torch.Tensor:
        return torch.empty(0)

    def prune_gates(self, kept: int) -> None:
        raise ValueError("a Bi-LSTM has no gates to prune")

    def task_id(self, name: str) -> int:
        if name not in self.task_index:
            raise KeyError(f"this model was not trained on task '{name}'; its tasks: {', '.join(self.task_index)}")
        return self.task_index[name]

    def encode(self, examples: Sequence[Example], with_target: bool = True) -> list[Encoded]:
        rows = []
        for example in examples:
            task_id = self.task_id(example.task)
            task = self.tasks[task_id]
            ids, truncated = self._source_ids(example.inputs)
            row = Encoded(task_id, ids, truncated=truncated)
            if with_target and example.target is not None:
                if task.kind == "generation":
                    target = self.tokenizer(task.target_text(example), add_special_tokens=False)["input_ids"]
                    row.labels = target[: self.config.max_target_length - 1] + [self.eos]
                else:
                    row.target = task.label_index(example)
            rows.append(row)
        return rows

    def _source_ids(self, inputs: dict[str, str]) -> tuple[list[int], bool]:
        """The input fields' tokens, joined by end-of-sequence tokens (no prompt words)."""
        ids: list[int] = []
        for text in inputs.values():
            ids += self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
        limit = self.config.source_tokens
        return ids[:limit], len(ids) > limit

    def forward(self, rows: Sequence[Encoded]) -> torch.Tensor:
        """Per-example training losses of a (mixed-task) batch; (B,)."""
        memory, mask, pooled = self._encode([row.input_ids for row in rows])
        losses: list[torch.Tensor] = [None] * len(rows)  # type: ignore[list-item]
        generating = [i for i, row in enumerate(rows) if self.tasks[row.task_id].kind == "generation"]
        for i, row in enumerate(rows):
            task = self.tasks[row.task_id]
            if task.kind == "classification":
                logits = self.heads[task.name](pooled[i])  # (C,)
                losses[i] = F.cross_entropy(logits[None], torch.tensor([int(row.target)], device=self.device))
            elif task.kind == "regression":
                target = torch.tensor(float(row.target), device=self.device)
                losses[i] = F.mse_loss(self.heads[task.name](pooled[i])[0], target)
        if generating:
            labels = pad([rows[i].labels for i in generating], IGNORE).to(self.device)  # (G, L)
            inputs = torch.cat([torch.full_like(labels[:, :1], self.eos), labels[:, :-1]], 1).clamp(min=0)
            logits, _ = self._decode(inputs, self._start_state(pooled[generating]),
                                     memory[generating], mask[generating])  # (G, L, V)
            token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            per_row = token_loss.sum(1) / (labels != IGNORE).sum(1)  # (G,)
            for row_loss, i in zip(per_row, generating):
                losses[i] = row_loss
        return torch.stack(losses)

    # --- the network --------------------------------------------------------------------
    def _encode(self, ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder states (B, T, 2H), their mask (B, T) and the attention-pooled state (B, 2H)."""
        tokens = pad(ids, self.tokenizer.pad_token_id).to(self.device)  # (B, T)
        mask = attention_mask(ids).bool().to(self.device)  # (B, T)
        lengths = mask.sum(1).cpu()  # packing wants the lengths on the CPU
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embed(tokens)), lengths,
                                                   batch_first=True, enforce_sorted=False)
        memory, _ = self.encoder(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(memory, batch_first=True, total_length=tokens.shape[1])
        scores = self.attention(memory).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        pooled = (scores.softmax(-1)[..., None] * memory).sum(1)  # (B, 2H)
        return memory, mask, self.dropout(pooled)

    def _start_state(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(self.bridge(pooled))[None]  # (1, B, 2H)
        return hidden, torch.zeros_like(hidden)

    def _decode(self, inputs: torch.Tensor, state, memory: torch.Tensor, mask: torch.Tensor):
        """Vocabulary logits (B, L, V) for decoder inputs (B, L), and the decoder's last state."""
        output, state = self.decoder(self.dropout(self.embed(inputs)), state)  # (B, L, 2H)
        scores = (output @ memory.transpose(1, 2)).masked_fill(~mask[:, None, :], float("-inf"))  # (B, L, T)
        context = scores.softmax(-1) @ memory  # (B, L, 2H)
        combined = self.dropout(torch.tanh(self.combine(torch.cat([output, context], -1))))  # (B, L, E)
        return combined @ self.embed.weight.T, state  # tied output layer

    # --- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, examples: Sequence[Example], batch_size: int = 16, max_new_tokens: int = 48,
                num_beams: int = 1, progress: str | None = None) -> list[Prediction]:
        """Predictions in input order; summaries are decoded greedily whatever `num_beams` says."""
        was_training = self.training
        self.eval()
        rows = self.encode(examples, with_target=False)
        results: list[Prediction] = []
        for start in range(0, len(rows), batch_size):
            results += self._predict_batch(rows[start: start + batch_size], max_new_tokens)
        self.train(was_training)
        return results

    def _predict_batch(self, rows: Sequence[Encoded], max_new_tokens: int) -> list[Prediction]:
        memory, mask, pooled = self._encode([row.input_ids for row in rows])
        results: list[Prediction] = []
        for i, row in enumerate(rows):
            task = self.tasks[row.task_id]
            if task.kind == "generation":
                results.append((self._greedy(memory[i: i + 1], mask[i: i + 1], pooled[i: i + 1], max_new_tokens), {}))
                continue
            output = self.heads[task.name](pooled[i])
            values = output.softmax(-1) if task.kind == "classification" else output
            results.append(task.from_head_output(values.tolist()))
        return results

    def _greedy(self, memory: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor, max_new_tokens: int) -> str:
        state, token, produced = self._start_state(pooled), torch.tensor([[self.eos]], device=self.device), []
        for _ in range(max_new_tokens):
            logits, state = self._decode(token, state, memory, mask)  # (1, 1, V)
            token = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            if token.item() == self.eos:
                break
            produced.append(token.item())
        return self.tokenizer.decode(produced, skip_special_tokens=True).strip()

    # --- checkpoints --------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().contiguous() for name, value in self.state_dict().items()}

    def task_parameters(self, task_id: int) -> dict[str, int | None]:
        """Nothing is one task's alone: every task's rows pass through the same LSTM."""
        return {}

    def load_trained(self, directory: str | Path) -> None:
        self.load_state_dict(read_weights(directory))

    def set_inference(self, quantize: Quantize) -> None:
        """Nothing pretrained to quantize: every weight of the Bi-LSTM is trained, and float32."""

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        write_saved(directory, "bilstm", self.config, self.tasks, self.trained_state(),
                    bilstm=self.lstm_config.model_dump(), **(extra or {}))

    @classmethod
    def from_saved(cls, saved: SavedFolder, directory: Path) -> BiLSTMModel:
        """The model saved in `directory` (what `read_saved` found there), in eval mode."""
        model = cls(saved.config, saved.tasks, BiLSTMConfig.model_validate(saved.meta["bilstm"]))
        model.load_trained(directory)
        return model.eval()
