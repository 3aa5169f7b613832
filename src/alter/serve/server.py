"""`alter serve`: the Predictor over HTTP (FastAPI + uvicorn).

Continuous scheduling (the default, `alter.serve.scheduler`): every iteration scores the
waiting classification items and advances every running generation by one token; new
generations join the running batch, finished ones are answered at once. Static
(`--scheduler static`): each HTTP request's items go into one queue, and a single worker
takes up to `max_batch_size` items (waiting at most `max_wait_ms` for more) and predicts
them as one mixed-task call. Either way items are validated before they are queued, so one
client's bad input never fails another client's batch, and a full queue (`max_queue`) is
answered 503 with Retry-After at once instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from alter.serve.batchers import Batcher, ContinuousBatcher
from alter.serve.config import ServeConfig
from alter.serve.guards import error_response, install_guards
from alter.serve.openapi import predict_openapi
from alter.serve.predictor import Predictor, RequestError
from alter.serve.requests import RequestedGeneration
from alter.serve.scheduler import QueueFull
from alter.serve.streaming import stream_events
from alter.serve.telemetry import CONTENT_TYPE as METRICS_CONTENT_TYPE
from alter.serve.telemetry import ServerMetrics


class Item(RequestedGeneration):
    """One request item: a task's inputs and, for a generation, what it asks of the writing."""

    task: str
    inputs: dict[str, str]
    stream: StrictBool = False  # a generation, alone in its request, answered as server-sent events


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[Item] = Field(min_length=1)


class PredictEndpoint:
    """POST /v1/predict: limits, validation before queueing, then a stream or the results."""

    def __init__(self, predictor: Predictor, config: ServeConfig, batcher):
        self.predictor, self.config, self.batcher = predictor, config, batcher

    async def __call__(self, body: PredictBody) -> Any:
        config, predictor = self.config, self.predictor
        if len(body.requests) > config.max_items:
            return error_response(422, f"{len(body.requests)} requests in one call; at most {config.max_items}")
        items = [item.model_dump() for item in body.requests]
        for index, item in enumerate(items):
            for name, text in item["inputs"].items():
                if len(text) > config.max_input_chars:
                    return error_response(422, f"requests.{index}.inputs.{name}: over {config.max_input_chars} "
                                               "characters")
        try:  # validate before queueing
            predictor.examples(items)
            predictor.settings(items)
        except RequestError as error:
            return error_response(422, str(error).replace("request ", "requests.", 1))
        streamed = [item.pop("stream") for item in items]
        try:
            if any(streamed):
                return await self._stream(items)
            return {"results": await asyncio.wait_for(self.batcher.submit(items), config.request_timeout_s)}
        except asyncio.TimeoutError:  # its rows were cancelled with it: they leave the batch
            return error_response(504, f"not answered within {config.request_timeout_s:g} s; retry, or ask for less")
        except QueueFull as error:
            return error_response(503, f"busy: {error}; retry shortly", {"Retry-After": "1"})

    async def _stream(self, items: list[dict[str, Any]]) -> Response:
        model = self.predictor.model
        kinds = {model.tasks[model.task_id(item["task"])].kind for item in items}
        if len(items) != 1 or kinds != {"generation"}:
            return error_response(422, "requests.0.stream: a streamed request holds one item, of a generation task")
        events = stream_events(self.batcher, items[0])
        first = await anext(events)  # a full queue is still a 503, before the stream starts
        return StreamingResponse(_prepend(first, events), media_type="text/event-stream")


async def _prepend(first: str, rest):
    yield first
    async for item in rest:
        yield item


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    batcher = ContinuousBatcher(predictor, config) if config.scheduler == "continuous" else Batcher(predictor, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="alter", summary="One multi-task model, every task, batched together.", lifespan=lifespan)
    app.state.batcher = batcher  # for tests: what is queued and running
    install_guards(app, config.max_body_bytes, os.environ.get(config.api_key_env))
    metrics = ServerMetrics([task.name for task in predictor.model.tasks], batcher.queue_depth, batcher.running_rows,
                            lambda: predictor.tokens_generated)
    answer = PredictEndpoint(predictor, config, batcher)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(predictor.model.tasks)}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": predictor.tasks()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.text(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/v1/predict", response_model=None)
    async def predict(body: PredictBody) -> Any:
        started = time.perf_counter()
        response = await answer(body)
        status = response.status_code if isinstance(response, Response) else 200
        metrics.observe([item.task for item in body.requests], status, time.perf_counter() - started)
        return response

    _publish_contract(app, predictor, config)
    return app


def _publish_contract(app: FastAPI, predictor: Predictor, config: ServeConfig) -> None:
    """/openapi.json with the predict operation's exact contract (`alter.serve.openapi`)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema["paths"]["/v1/predict"]["post"].update(
                predict_openapi(predictor.model.tasks, config.max_items, config.max_input_chars, predictor.max_beams))
            for unused in ("PredictBody", "Item", "HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi
