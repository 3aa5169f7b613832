"""The API contract of POST /v1/predict as OpenAPI says it: exactly what the server accepts
(the model's task names, each task's input fields as non-empty strings within the size
limit, `stream` only on a generation item alone in its request, a generation's settings
within the server's limits) and every status it answers, so that clients and schema-driven tools
(schemathesis) can trust it. The server's own checks enforce the same rules.
"""

from __future__ import annotations

from typing import Any

from alter.serve.requests import NON_BLANK, RequestedGeneration

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
RESULT = {
    "type": "object", "required": ["task", "prediction", "scores", "truncated"],
    "properties": {
        "task": {"type": "string"},
        "prediction": {"anyOf": [{"type": "string"}, {"type": "number"}]},  # a label or text, or a score
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "truncated": {"type": "boolean"},
    },
}
EVENT_DATA = {"oneOf": [  # what each server-sent event carries: a new piece of text, then the whole result
    {"type": "object", "required": ["piece"], "properties": {"piece": {"type": "string"}},
     "additionalProperties": False},
    {"type": "object", "required": ["result"], "properties": {"result": RESULT}, "additionalProperties": False},
    {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},  # a failure mid-stream
     "additionalProperties": False},
]}
EVENT = {"type": "object", "required": ["data"],  # one server-sent event, as OpenAPI 3.2 describes them
         "properties": {"data": {"type": "string", "contentMediaType": "application/json",
                                 "contentSchema": EVENT_DATA}}}
STATUSES = {
    400: "the body is not UTF-8 or not JSON the server can read",
    401: "missing or wrong API key (when the server has one)",
    413: "the body is over the server's byte limit (however it is framed)",
    422: "a request the schema refuses: unknown task, a missing, empty or too long input field, too many "
         "items, a bad stream, generation settings out of bounds or on a task that does not generate",
    503: "the queue is full; retry after the Retry-After header's seconds",
    504: "not answered within the server's request timeout",
}


# Sampling writes one beam: a request may not ask for both.
SAMPLING_WITH_BEAMS = {"required": ["temperature", "num_beams"],
                       "properties": {"temperature": {"type": "number", "exclusiveMinimum": 0},
                                      "num_beams": {"type": "integer", "minimum": 2}}}


def _generation_fields(max_beams: int) -> dict[str, Any]:
    """The settings a generation item may carry, with the server's bounds."""
    fields = RequestedGeneration.model_json_schema()["properties"]
    for schema in fields.values():
        schema.pop("title", None)
    fields["num_beams"]["anyOf"][0]["maximum"] = max_beams
    return fields


def _item(task, max_input_chars: int, streamed: bool, max_beams: int) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1, "maxLength": max_input_chars, "pattern": NON_BLANK}
    properties: dict[str, Any] = {
        "task": {"type": "string", "enum": [task.name]},
        "inputs": {"type": "object", "required": list(task.spec.inputs),
                   "properties": {field: text for field in task.spec.inputs},
                   "additionalProperties": {"type": "string"}},  # fields the task does not use are ignored
        "stream": {"type": "boolean", "enum": [True] if streamed else [False]},
    }
    item = {"type": "object", "title": f"{task.name} item", "additionalProperties": False,
            "required": ["task", "inputs", *(["stream"] if streamed else [])]}
    if task.kind == "generation":
        properties.update(_generation_fields(max_beams))
        item["not"] = SAMPLING_WITH_BEAMS
    return {**item, "properties": properties}


def predict_openapi(tasks, max_items: int, max_input_chars: int, max_beams: int) -> dict[str, Any]:
    """The operation's request body and responses, in place of what FastAPI derives from the
    (looser) validation models."""
    items = [_item(task, max_input_chars, False, max_beams) for task in tasks]
    streamed = [_item(task, max_input_chars, True, max_beams) for task in tasks if task.kind == "generation"]
    bodies = [{"type": "object", "title": "items answered together", "required": ["requests"],
               "additionalProperties": False,
               "properties": {"requests": {"type": "array", "minItems": 1, "maxItems": max_items,
                                           "items": {"oneOf": items}}}}]
    if streamed:
        bodies.append({"type": "object", "title": "one streamed generation", "required": ["requests"],
                       "additionalProperties": False,
                       "properties": {"requests": {"type": "array", "minItems": 1, "maxItems": 1,
                                                   "items": {"oneOf": streamed}}}})
    responses: dict[str, Any] = {
        "200": {"description": "one result per item, in order; a streamed item: server-sent events",
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["results"],
                    "properties": {"results": {"type": "array", "items": RESULT}}}},
                    "text/event-stream": {"schema": EVENT}}},
    }
    for status, meaning in STATUSES.items():
        entry: dict[str, Any] = {"description": meaning, "content": {"application/json": {"schema": ERROR}}}
        if status == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        responses[str(status)] = entry
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": bodies}}}},
            "responses": responses}
