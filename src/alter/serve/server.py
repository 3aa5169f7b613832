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
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from alter.serve.predictor import Predictor, RequestError
from alter.serve.scheduler import ContinuousScheduler, QueueFull
from alter.serve.streaming import stream_events


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # continuous: scoring between decoding steps, generations joining and leaving a running
    # batch at every step (alter.serve.scheduler); static: one batch at a time (`Batcher`).
    scheduler: Literal["continuous", "static"] = "continuous"
    max_queue: int = Field(default=256, ge=1)  # items waiting; beyond it, 503 with Retry-After
    batching: bool = True  # static: items of concurrent requests predicted together
    max_batch_size: int = Field(default=16, ge=1)  # items predicted together
    max_wait_ms: float = Field(default=10.0, ge=0)  # how long a batch waits to fill up (0: no batching)
    max_items: int = Field(default=64, ge=1)  # items per HTTP request
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_input_chars: int = Field(default=20_000, ge=1)  # per input field
    request_timeout_s: float = Field(default=300.0, gt=0)  # a request still unanswered then gets 504
    api_key_env: str = "ALTER_API_KEY"  # when this variable is set, requests need its bearer token


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    inputs: dict[str, str]
    stream: bool = False  # a generation, alone in its request, answered as server-sent events
    max_new_tokens: int | None = Field(default=None, ge=1)  # a generation's budget, at most the server's


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[Item] = Field(min_length=1)


@dataclass
class _Pending:
    item: dict[str, Any]
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """One queue and one worker: items from concurrent requests share predictions."""

    def __init__(self, predictor: Predictor, config: ServeConfig):
        self.predictor, self.config = predictor, config
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.lock = asyncio.Lock()  # one prediction at a time when not batching

    def start(self) -> None:
        self.worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        await self.queue.join()
        if self.worker:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker

    async def submit(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.queue.qsize() + len(items) > self.config.max_queue:
            raise QueueFull(f"{self.queue.qsize()} items are waiting (at most {self.config.max_queue})")
        if not self.config.batching:  # this request's items together, never with another's
            async with self.lock:
                return await asyncio.to_thread(self.predictor.predict, items)
        pending = [_Pending(item) for item in items]
        for entry in pending:
            self.queue.put_nowait(entry)
        return list(await asyncio.gather(*(entry.done for entry in pending)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while self.config.batching and len(batch) < self.config.max_batch_size:
                remaining = deadline - loop.time()
                try:  # wait for more until the deadline; after it, take only what is queued
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining) if remaining > 0
                                 else self.queue.get_nowait())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            try:
                results = await asyncio.to_thread(self.predictor.predict, [entry.item for entry in batch])
                for entry, result in zip(batch, results):
                    if not entry.done.done():  # not cancelled (its request timed out or its client left)
                        entry.done.set_result(result)
            except Exception as error:  # noqa: BLE001 - handed to the waiting requests, not lost
                for entry in batch:
                    if not entry.done.done():
                        entry.done.set_exception(error)
            finally:
                for _ in batch:
                    self.queue.task_done()


class ContinuousBatcher:
    """`ContinuousScheduler`'s worker thread behind the same async `submit` as `Batcher`."""

    def __init__(self, predictor: Predictor, config: ServeConfig):
        self.scheduler = ContinuousScheduler(predictor, max_rows=config.max_batch_size, max_queue=config.max_queue)

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)

    def start_stream(self, item: dict[str, Any], on_piece) -> Any:
        """The future of one streamed generation item; `on_piece` hears its text as written."""
        (future,) = self.scheduler.submit([item], on_piece=on_piece)
        return future

    async def submit(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        futures = self.scheduler.submit(items)
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))
        except asyncio.CancelledError:  # the client went away: its rows leave the batch
            for future in futures:
                future.cancel()
            raise


class BodyLimit:
    """ASGI middleware: stop reading a request body at `limit` bytes, however it is framed
    (a Content-Length that says more is refused before reading; a chunked body is counted as
    it arrives), and answer 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI turns this into the 413 response
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


async def _prepend(first: str, rest):
    yield first
    async for item in rest:
        yield item


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    batcher = ContinuousBatcher(predictor, config) if config.scheduler == "continuous" else Batcher(predictor, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="alter", summary="One multi-task model, every task, batched together.", lifespan=lifespan)
    app.state.batcher = batcher  # for tests and metrics: what is queued and running
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    api_key = os.environ.get(config.api_key_env)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        length = request.headers.get("content-length")
        if length and (not length.isdigit() or int(length) > config.max_body_bytes):
            return _error(413, f"request body over {config.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors()[:5]:
            where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
            problems.append(f"{where}: {problem['msg']}")
        return _error(422, "; ".join(problems))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), error.headers)  # e.g. a 405's Allow

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tasks": len(predictor.model.tasks)}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": predictor.tasks()}

    @app.post("/v1/predict")
    async def predict(body: PredictBody) -> Any:
        if len(body.requests) > config.max_items:
            return _error(413, f"{len(body.requests)} requests in one call; at most {config.max_items}")
        items = [item.model_dump() for item in body.requests]
        for index, item in enumerate(items):
            for name, text in item["inputs"].items():
                if len(text) > config.max_input_chars:
                    return _error(413, f"requests.{index}.inputs.{name}: over {config.max_input_chars} characters")
        try:
            predictor.examples(items)  # validate before queueing
        except RequestError as error:
            return _error(422, str(error).replace("request ", "requests.", 1))
        streamed = [item.pop("stream") for item in items]
        try:
            if any(streamed):
                kinds = {predictor.model.tasks[predictor.model.task_id(item["task"])].kind for item in items}
                if len(items) != 1 or kinds != {"generation"}:
                    return _error(422, "requests.0.stream: a streamed request holds one item, of a generation task")
                events = stream_events(batcher, items[0])
                first = await anext(events)  # a full queue is still a 503, before the stream starts
                return StreamingResponse(_prepend(first, events), media_type="text/event-stream")
            return {"results": await asyncio.wait_for(batcher.submit(items), config.request_timeout_s)}
        except asyncio.TimeoutError:  # its rows were cancelled with it: they leave the batch
            return _error(504, f"not answered within {config.request_timeout_s:g} s; retry, or ask for less")
        except QueueFull as error:
            return _error(503, f"busy: {error}; retry shortly", {"Retry-After": "1"})

    return app
