"""The continuous scheduler behind `alter serve --scheduler continuous`: one worker thread
that, at every iteration, scores the classification and regression items waiting (one mixed
batch), prefills the waiting generation items into the running batch, and advances every
running generation by one token. A classification never waits for a summary to end; a
finished summary is answered at once, not when its batch's longest one ends.

On a CPU every item scored between two decoding steps takes the cores from the summaries
being written, so at low load they end later than under the static scheduler (which makes
the labels wait instead). `label_wait_s` trades the one for the other: while generations
run, scored items are held until the oldest has waited that long (then all of them are
scored in one batch), or until no generation runs; 0 scores them at the next iteration.

Every generation writes under its own settings (its request's over its task's); what the
running batch cannot do (beam search, an encoder-decoder or sliding-window backbone:
`MTAModel.decodes`) is predicted statically between iterations.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from alter.data.generation import GenerationSettings
from alter.models.decode_batch import DecodeBatch, Generating
from alter.serve.predictor import Predictor


class QueueFull(RuntimeError):
    """More items are waiting than `max_queue`; the caller should come back later."""


Pieces = Callable[[str], None]  # called from the worker thread with each new piece of text


@dataclass
class _Item:
    request: Mapping[str, Any]
    future: Future = field(default_factory=Future)
    on_piece: Pieces | None = None  # a streamed generation
    arrived: float = field(default_factory=time.monotonic)


class ContinuousScheduler:
    def __init__(self, predictor: Predictor, max_rows: int = 16, max_queue: int = 256, idle_wait_s: float = 0.05,
                 label_wait_s: float = 0.0):
        self.predictor, self.max_rows, self.max_queue, self.idle_wait_s = predictor, max_rows, max_queue, idle_wait_s
        self.label_wait_s = label_wait_s
        # Items to predict statically (scores; generations the running batch cannot take),
        # held while generations run (`label_wait_s`).
        self.held: list[_Item] = []
        self.continuous = predictor.model.decodes()  # whether this model can keep a running batch
        self.batch = self._new_batch() if self.continuous else None
        self.waiting: queue.Queue[_Item] = queue.Queue()
        self.running: dict[int, tuple[Generating, _Item]] = {}  # id(row) -> the row and its request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the caller's side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alter-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Answer everything already accepted, then stop."""
        self._stop.set()
        if self._thread:
            self._thread.join()

    def submit(self, requests: Sequence[Mapping[str, Any]], on_piece: Pieces | None = None) -> list[Future]:
        """One future per request (validated beforehand), answered as `Predictor.predict`
        answers it; QueueFull when accepting them would pass `max_queue`. `on_piece`: hears
        each new piece of a generation's text as it is written (pieces join into the text)."""
        if self.waiting.qsize() + len(requests) > self.max_queue:
            raise QueueFull(f"{self.waiting.qsize()} items are waiting (at most {self.max_queue})")
        items = [_Item(request, on_piece=on_piece) for request in requests]
        for item in items:
            self.waiting.put(item)
        return [item.future for item in items]

    # --- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            busy = self._generating()
            new = self._take(block=not busy and not self.held)
            if self._stop.is_set() and not new and not busy and not self.held and self.waiting.empty():
                return
            try:
                self._iterate(new)
            except Exception as error:  # noqa: BLE001 - handed to the waiting requests, not lost
                self._fail_all(new, error)

    def _take(self, block: bool) -> list[_Item]:
        """What is waiting now (after up to `idle_wait_s` when nothing runs)."""
        items = []
        try:
            if block:
                items.append(self.waiting.get(timeout=self.idle_wait_s))
            while True:
                items.append(self.waiting.get_nowait())
        except queue.Empty:
            return items

    def _iterate(self, new: list[_Item]) -> None:
        model = self.predictor.model
        static, generating = [], []  # generating: (item, its settings) for the running batch
        for item in new:
            if item.future.cancelled():  # its client left before it was taken
                continue
            if model.tasks[model.task_id(item.request["task"])].kind != "generation":
                static.append(item)
                continue
            (settings,) = self.predictor.settings([item.request])
            if self.continuous and model.decodes(settings):
                generating.append((item, settings))
            else:
                static.append(item)
        self.held = [item for item in [*self.held, *static] if not item.future.cancelled()]
        if self.held and self._scoring_due():
            self._predict_statically(self.held)
            self.held = []  # after: a failed batch's items are failed with the rest (`_fail_all`)
        if self.continuous:
            self._admit(generating)
            for entry, item in self.running.values():
                entry.cancelled = entry.cancelled or item.future.cancelled()  # its client is gone
            self.batch.step()
            in_batch = {id(entry) for entry in self.batch.rows}
            self.running = {key: value for key, value in self.running.items() if key in in_batch}

    def _scoring_due(self) -> bool:
        """Whether the held items are scored now: when no generation runs, when the oldest
        has waited `label_wait_s`, or when the scheduler is stopping."""
        oldest = min(item.arrived for item in self.held)
        return not self._generating() or self._stop.is_set() or time.monotonic() - oldest >= self.label_wait_s

    def _generating(self) -> bool:
        """Whether rows are decoding in the running batch."""
        return self.batch is not None and len(self.batch) > 0

    def _predict_statically(self, items: list[_Item]) -> None:
        results = self.predictor.predict([item.request for item in items])
        for item, result in zip(items, results):
            if not item.future.done():  # not cancelled by its client meanwhile
                if item.on_piece and isinstance(result["prediction"], str):
                    item.on_piece(result["prediction"])  # written at once: one piece
                item.future.set_result(result)

    def _admit(self, generating: list[tuple[_Item, GenerationSettings]]) -> None:
        """Prefill new generation items into the running batch (as many as it has room for;
        the rest wait for the next iteration)."""
        room = max(0, self.max_rows - len(self.batch))
        for item, _ in generating[room:]:
            self.waiting.put(item)
        generating = generating[:room]
        if not generating:
            return
        items = [item for item, _ in generating]
        examples = self.predictor.examples([item.request for item in items])
        rows = self.predictor.model.encode(examples, with_target=False)
        entries = [Generating(row, settings, on_done=self._answer(item),
                              on_token=self._streamer(item.on_piece) if item.on_piece else None)
                   for row, (item, settings) in zip(rows, generating)]
        self.running.update({id(entry): (entry, item) for entry, item in zip(entries, items)})
        self.batch.join(entries)

    def _answer(self, item: _Item):
        tokenizer = self.predictor.model.tokenizer

        def done(entry: Generating) -> None:
            self.predictor.tokens_generated += len(entry.tokens)
            text = tokenizer.decode(entry.tokens, skip_special_tokens=True)
            if item.on_piece and len(text) > len(entry.streamed):  # what the pieces have not said yet
                item.on_piece(text[len(entry.streamed):])
            if not item.future.done():
                item.future.set_result(self.predictor.result(entry.row, text.strip(), {}))
        return done

    def _streamer(self, on_piece: Pieces):
        """on_token: the text's new piece since the last one; a piece that ends inside a
        character (bytes of it still to come) waits for the next token."""
        tokenizer = self.predictor.model.tokenizer

        def token(entry: Generating) -> None:
            text = tokenizer.decode(entry.tokens, skip_special_tokens=True)
            sent = entry.streamed
            if text.endswith("\ufffd") or len(text) <= len(sent):
                return
            entry.streamed = text
            on_piece(text[len(sent):])
        return token

    def _fail_all(self, new: list[_Item], error: Exception) -> None:
        """A failed iteration fails the items it held and every running row (their batch is
        gone); the scheduler carries on with the next requests."""
        for item in [*new, *self.held, *(item for _, item in self.running.values())]:
            if not item.future.done():
                item.future.set_exception(error)
        self.running, self.held = {}, []
        if self.batch is not None:
            self.batch = self._new_batch()

    def _new_batch(self) -> DecodeBatch:
        return self.predictor.model.decode_batch()
