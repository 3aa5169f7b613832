"""How the server batches, bounds and guards its requests (`alter serve`'s options)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # continuous: scoring between decoding steps, generations joining and leaving a running
    # batch at every step (alter.serve.scheduler); static: one batch at a time (`Batcher`).
    scheduler: Literal["continuous", "static"] = "continuous"
    # continuous: how long a scored item may be held while summaries are being written, so that
    # at low load they are not slowed by every label scored between their steps (0: at once).
    label_wait_ms: float = Field(default=0.0, ge=0)
    max_queue: int = Field(default=256, ge=1)  # items waiting; beyond it, 503 with Retry-After
    batching: bool = True  # static: items of concurrent requests predicted together
    max_batch_size: int = Field(default=16, ge=1)  # items predicted together
    max_wait_ms: float = Field(default=10.0, ge=0)  # how long a batch waits to fill up (0: no batching)
    max_items: int = Field(default=64, ge=1)  # items per HTTP request
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_input_chars: int = Field(default=20_000, ge=1)  # per input field
    request_timeout_s: float = Field(default=300.0, gt=0)  # a request still unanswered then gets 504
    api_key_env: str = "ALTER_API_KEY"  # when this variable is set, requests need its bearer token
