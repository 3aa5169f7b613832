"""A streamed generation over HTTP: server-sent events, one per new piece of text and a last
one with the whole result (the answer a non-streamed request gets), as OpenAI-style APIs
stream. A client that disconnects cancels its request, and its row leaves the batch.

    data: {"piece": "Person1 asks"}
    data: {"piece": " for the way"}
    data: {"result": {"task": "dialogsum", "prediction": "Person1 asks for the way ...", ...}}

A generation that fails after the stream began ends it with `data: {"error": "..."}` (its
status, 200, was sent with the first byte).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alter.serve.batchers import Batcher, ContinuousBatcher


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def stream_events(batcher: Batcher | ContinuousBatcher, item: dict[str, Any]) -> AsyncIterator[str]:
    """Events for one generation item. A batcher that `streams` (the continuous scheduler)
    reports pieces as they are written; another answers at once, in one piece."""
    if not batcher.streams:
        (result,) = await batcher.submit([item])
        yield event({"piece": result["prediction"]})
        yield event({"result": result})
        return
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    future = batcher.start_stream(item, lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece))
    answer = asyncio.wrap_future(future)
    try:
        while True:
            waiting = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({waiting, answer}, return_when=asyncio.FIRST_COMPLETED)
            if waiting in done:
                yield event({"piece": waiting.result()})
                continue
            waiting.cancel()
            while not pieces.empty():  # pieces were queued before the answer
                yield event({"piece": pieces.get_nowait()})
            error = answer.exception()
            yield event({"error": f"the generation failed: {error}"} if error else {"result": answer.result()})
            return
    finally:
        if not future.done():  # the client went away
            future.cancel()
