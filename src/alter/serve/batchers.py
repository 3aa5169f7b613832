"""The two schedulers behind the same async `submit`: `Batcher` (static: a batch at a time,
items of concurrent requests together) and `ContinuousBatcher` (`ContinuousScheduler`'s
worker thread: scoring between decoding steps, generations joining a running batch)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from alter.serve.config import ServeConfig
from alter.serve.predictor import Predictor
from alter.serve.scheduler import ContinuousScheduler, QueueFull


@dataclass
class _Pending:
    item: dict[str, Any]
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """One queue and one worker: items from concurrent requests share predictions."""

    streams = False  # answers a generation in one piece (`stream_events`)

    def __init__(self, predictor: Predictor, config: ServeConfig):
        self.predictor, self.config = predictor, config
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.lock = asyncio.Lock()  # one prediction at a time when not batching

    def start(self) -> None:
        self.worker = asyncio.create_task(self._run())

    def queue_depth(self) -> int:
        return self.queue.qsize()

    def running_rows(self) -> int:
        return 0  # a static batch runs inside one predict call

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

    streams = True  # reports a generation's pieces as they are written (`start_stream`)

    def __init__(self, predictor: Predictor, config: ServeConfig):
        self.scheduler = ContinuousScheduler(predictor, max_rows=config.max_batch_size, max_queue=config.max_queue,
                                             label_wait_s=config.label_wait_ms / 1000)

    def start(self) -> None:
        self.scheduler.start()

    def queue_depth(self) -> int:
        return self.scheduler.waiting.qsize()

    def running_rows(self) -> int:
        return len(self.scheduler.running)

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
