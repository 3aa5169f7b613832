"""Predictor: one loaded model answers requests of any mix of tasks, in request order.

Requests of different tasks share batches: the MTA layers route each row to its task's
gates, so a batch needs no grouping by task. Classification is rank classification in one
forward pass, regression the expected value over score bins, summaries greedy or beam search
with task ids expanded with the beams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alter.data.task import Example
from alter.model import MTAModel


class RequestError(ValueError):
    """A request that cannot be answered; the message names the request and the problem."""


class Predictor:
    def __init__(self, model: MTAModel, batch_size: int = 16, max_new_tokens: int = 48, num_beams: int = 1):
        self.model = model.eval()
        self.batch_size, self.max_new_tokens, self.num_beams = batch_size, max_new_tokens, num_beams
        self.tokens_generated = 0  # tokens written by generations (GET /metrics)

    @classmethod
    def load(cls, checkpoint: str | Path, **options: Any) -> Predictor:
        return cls(MTAModel.load(checkpoint), **options)

    def tasks(self) -> list[dict[str, Any]]:
        """What each task takes and answers: name, kind, input fields, labels."""
        return [{"name": task.name, "kind": task.kind, "inputs": list(task.spec.inputs),
                 "labels": list(task.spec.labels or [])} for task in self.model.tasks]

    def examples(self, requests: Sequence[Mapping[str, Any]]) -> list[Example]:
        """Validated requests `{"task": NAME, "inputs": {FIELD: TEXT}}` as examples (fields the
        task does not use are ignored)."""
        examples = []
        for index, request in enumerate(requests):
            where = f"request {index}"
            if not isinstance(request, Mapping):
                raise RequestError(f"{where}: expected an object with 'task' and 'inputs'")
            name, inputs = request.get("task"), request.get("inputs")
            if name not in self.model.task_index:
                raise RequestError(f"{where}: unknown task {name!r}; tasks: {', '.join(self.model.task_index)}")
            if not isinstance(inputs, Mapping):
                raise RequestError(f"{where}: 'inputs' must be an object of input fields")
            task = self.model.tasks[self.model.task_id(name)]
            fields = task.spec.inputs
            missing = task.missing_inputs(inputs)
            if missing:
                raise RequestError(f"{where}: task {name} needs input field(s) {', '.join(missing)}")
            for field in fields:
                if not isinstance(inputs[field], str) or not inputs[field].strip():
                    raise RequestError(f"{where}: input field {field} must be a non-empty string")
            examples.append(Example(name, {field: inputs[field] for field in fields}, None))
        return examples

    def predict(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One result per request, in request order: `prediction` (a label, a number or a
        text), `scores` (per label or score bin; empty for text) and `truncated` (the input
        was cut to the model's `max_source_length`, as in training)."""
        rows = self.model.encode(self.examples(requests), with_target=False)
        budgets = [self.budget(request) for request in requests]
        predictions: list = [None] * len(rows)
        for budget in sorted(set(budgets)):  # one call per generation budget asked for
            indices = [i for i, wanted in enumerate(budgets) if wanted == budget]
            for i, prediction in zip(indices, self.model.predict_encoded([rows[i] for i in indices], self.batch_size,
                                                                          budget, self.num_beams)):
                predictions[i] = prediction
        tokenizer = self.model.tokenizer
        self.tokens_generated += sum(len(tokenizer(value, add_special_tokens=False)["input_ids"])
                                     for row, (value, _) in zip(rows, predictions)
                                     if self.model.tasks[row.task_id].kind == "generation")  # the text's tokens
        return [{"task": self.model.tasks[row.task_id].name, "prediction": value, "scores": scores,
                 "truncated": row.truncated} for row, (value, scores) in zip(rows, predictions)]

    def budget(self, request: Mapping[str, Any]) -> int:
        """The new tokens a generation request may write: its own `max_new_tokens`, at most the
        server's (the default)."""
        asked = request.get("max_new_tokens")
        return self.max_new_tokens if asked is None else min(int(asked), self.max_new_tokens)
