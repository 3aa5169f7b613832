"""Predictor: one loaded model answers requests of any mix of tasks, in request order.

Requests of different tasks share batches: the MTA layers route each row to its task's
gates, so a batch needs no grouping by task. Classification is rank classification in one
forward pass, regression the expected value over score bins, summaries written with their
task's generation settings (saved with the model), which a request may override within the
server's limits (`RequestedGeneration`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from alter.data.collate import Encoded
from alter.data.generation import GenerationSettings
from alter.data.task import Example
from alter.models.contract import ServableModel
from alter.serve.requests import FIELDS, blank, requested_settings


class RequestError(ValueError):
    """A request that cannot be answered; the message names the request and the problem."""


class Predictor:
    def __init__(self, model: ServableModel, batch_size: int = 16, max_new_tokens: int = 48, num_beams: int = 1,
                 max_beams: int = 4):
        """`max_new_tokens`, `num_beams`: what a generation writes where neither its task nor
        its request says; `max_new_tokens` and `max_beams` bound what they may ask."""
        if not model.capabilities.serving:
            raise ValueError(f"a {type(model).__name__} is not served (only transformer systems are); "
                             "score it with `alter eval`")
        self.model = model.eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_beams = max(max_beams, num_beams)
        self.defaults = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams)
        self.tokens_generated = 0  # tokens written by generations (GET /metrics)

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
                if not isinstance(inputs[field], str) or blank(inputs[field]):
                    raise RequestError(f"{where}: input field {field} must be a non-empty string")
            examples.append(Example(name, {field: inputs[field] for field in fields}, None))
        return examples

    def settings(self, requests: Sequence[Mapping[str, Any]]) -> list[GenerationSettings]:
        """How each (valid) request's generation writes: its own fields over its task's
        settings over the server's, the length cut to the server's `max_new_tokens`."""
        settings = []
        for index, request in enumerate(requests):
            task_id = self.model.task_id(request["task"])
            asked = {name for name in FIELDS if request.get(name) is not None}
            if asked and self.model.tasks[task_id].kind != "generation":
                raise RequestError(f"request {index}: {', '.join(sorted(asked))}: task {request['task']} does not "
                                   "generate")
            if (request.get("num_beams") or 1) > self.max_beams:
                raise RequestError(f"request {index}: num_beams {request['num_beams']} is over the server's "
                                   f"{self.max_beams}")
            try:
                resolved = self.model.generation_settings(task_id, self.defaults, requested_settings(request))
            except ValueError as error:  # e.g. sampling asked with beams
                raise RequestError(f"request {index}: {error}") from None
            settings.append(resolved.model_copy(update={
                "max_new_tokens": min(resolved.max_new_tokens or self.max_new_tokens, self.max_new_tokens),
                "num_beams": min(resolved.num_beams or 1, self.max_beams)}))
        return settings

    def predict(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One result per request, in request order: `prediction` (a label, a number or a
        text), `scores` (per label or score bin; empty for text) and `truncated` (the input
        was cut to the model's `max_source_length`, as in training)."""
        rows = self.model.encode(self.examples(requests), with_target=False)
        predictions = self.model.predict_encoded(rows, self.batch_size, settings=self.settings(requests))
        tokenizer = self.model.tokenizer
        self.tokens_generated += sum(len(tokenizer(value, add_special_tokens=False)["input_ids"])
                                     for row, (value, _) in zip(rows, predictions)
                                     if self.model.tasks[row.task_id].kind == "generation")  # the text's tokens
        return [self.result(row, value, scores) for row, (value, scores) in zip(rows, predictions)]

    def result(self, row: Encoded, prediction: Any, scores: dict[str, float]) -> dict[str, Any]:
        """What a request item gets back, whichever path predicted it."""
        return {"task": self.model.tasks[row.task_id].name, "prediction": prediction, "scores": scores,
                "truncated": row.truncated}

