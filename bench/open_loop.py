"""Open-loop load, as serving engines are measured (vLLM's benchmark_serving): requests arrive
as a Poisson process at a fixed rate whatever the server's speed, so a slow server builds a
queue instead of slowing its clients down. Used by bench/serve_load.py.

A rate is sustained when nothing fails, every request sent during the window is answered
within `DRAIN_S` after it, and the queue does not grow: for every task, requests that arrive
in the last third of the window wait at most twice as long (plus a second) at the median as
those of the first third.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx

DRAIN_S = 15.0


@dataclass
class Outcome:
    task: str
    sent_at: float  # seconds after the window opened
    latency: float | None = None  # to the whole answer; None: failed
    first_piece: float | None = None  # a streamed summary: to its first piece of text
    status: int | None = None


@dataclass
class Window:
    rate: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.latency is not None]

    @property
    def errors(self) -> int:
        return len(self.outcomes) - len(self.answered)

    def sustained(self) -> bool:
        if self.errors or not self.outcomes:
            return False
        if any(o.sent_at + o.latency > self.seconds + DRAIN_S for o in self.outcomes):
            return False
        for task in {o.task for o in self.outcomes}:  # a summary always waits longer than a label
            early = [o.latency for o in self.outcomes if o.task == task and o.sent_at < self.seconds / 3]
            late = [o.latency for o in self.outcomes if o.task == task and o.sent_at >= 2 * self.seconds / 3]
            if early and late and quantile(late, 0.5) > 2 * quantile(early, 0.5) + 1.0:
                return False
        return True

    def summary(self) -> dict:
        """Seconds per task (p50, p90, p99), time to the first piece of streamed summaries,
        answered per second, errors and the statuses that were not 200."""
        tasks = sorted({o.task for o in self.outcomes})
        streamed = [o.first_piece for o in self.answered if o.first_piece is not None]
        finished = max((o.sent_at + o.latency for o in self.answered), default=self.seconds)
        return {
            "rate_rps": round(self.rate, 4), "seconds": self.seconds, "sent": len(self.outcomes),
            "tasks": {task: percentiles([o.latency for o in self.answered if o.task == task]) for task in tasks},
            "ttft_p50": round(quantile(streamed, 0.5), 3) if streamed else None, "streamed": len(streamed),
            "answered": len(self.answered), "answered_per_s": round(len(self.answered) / max(finished, 1e-9), 4),
            "errors": self.errors, "statuses": sorted({o.status for o in self.outcomes if o.status != 200},
                                                      key=str),
            "sustained": self.sustained(),
            "latencies": [[o.task, round(o.sent_at, 3), None if o.latency is None else round(o.latency, 3)]
                          for o in self.outcomes],  # (task, sent at, seconds) of every request
        }


def paired_p50_difference(base: Window, other: Window, task: str, resamples: int = 2000,
                          seed: int = 0) -> dict | None:
    """`other`'s p50 minus `base`'s for `task`, in seconds, with a 95% bootstrap interval:
    both windows sent the same requests at the same times (the same seed), so request i of
    one is request i of the other and a resample draws the same requests from both."""
    pairs = [(a.latency, b.latency) for a, b in zip(base.outcomes, other.outcomes)
             if a.task == task and a.latency is not None and b.latency is not None]
    if not pairs:
        return None
    rng = random.Random(seed)
    differences = []
    for _ in range(resamples):
        drawn = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        differences.append(quantile([b for _, b in drawn], 0.5) - quantile([a for a, _ in drawn], 0.5))
    return {"p50_diff": round(quantile([b for _, b in pairs], 0.5) - quantile([a for a, _ in pairs], 0.5), 3),
            "ci95": [round(quantile(differences, 0.025), 3), round(quantile(differences, 0.975), 3)],
            "n": len(pairs)}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "n": 0}
    return {"p50": round(quantile(values, 0.5), 3), "p90": round(quantile(values, 0.9), 3),
            "p99": round(quantile(values, 0.99), 3), "n": len(values)}


async def send(http: httpx.AsyncClient, url: str, item: dict, outcome: Outcome, began: float) -> None:
    """One request; a streamed one is read event by event."""
    try:
        if not item.get("stream"):
            response = await http.post(url, json={"requests": [item]})
            outcome.status = response.status_code
        else:
            async with http.stream("POST", url, json={"requests": [item]}) as response:
                outcome.status = response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and outcome.first_piece is None:
                        outcome.first_piece = time.perf_counter() - began - outcome.sent_at
                    if line.startswith('data: {"error"'):
                        outcome.status = 599  # failed after the stream began
        if outcome.status == 200:
            outcome.latency = time.perf_counter() - began - outcome.sent_at
    except httpx.HTTPError as error:
        outcome.status = f"{type(error).__name__}"  # type: ignore[assignment]


async def run_window(url: str, requests: list[dict], rate: float, seconds: float, seed: int = 0) -> Window:
    """Requests in turn from `requests`, sent at Poisson arrival times of `rate` per second
    for `seconds`; waits for every answer (at most `DRAIN_S` past the window, then gives up)."""
    arrivals, clock, rng = [], 0.0, random.Random(seed)
    while True:
        clock += rng.expovariate(rate)
        if clock >= seconds:
            break
        arrivals.append(clock)
    window = Window(rate, seconds)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=seconds + DRAIN_S + 60, limits=limits) as http:
        began = time.perf_counter()
        tasks = []
        for index, at in enumerate(arrivals):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - began)))
            item = requests[index % len(requests)]
            outcome = Outcome(item["task"], at)
            window.outcomes.append(outcome)
            tasks.append(asyncio.create_task(send(http, url, item, outcome, began)))
        _, late = await asyncio.wait(tasks, timeout=max(1.0, seconds + DRAIN_S + 30 - (time.perf_counter() - began)))
        for task in late:  # unanswered: counted as errors
            task.cancel()
    return window


def find_capacity(url: str, requests: list[dict], start_rps: float, seconds: float, steps: int,
                  log=print) -> tuple[float, list[dict]]:
    """The highest rate sustained: doubling from `start_rps` until a rate fails, then
    `steps` bisections between the last sustained rate and the first failed one."""
    probes, good, bad = [], 0.0, None
    rate = start_rps
    while bad is None:
        window = asyncio.run(run_window(url, requests, rate, seconds, seed=len(probes)))
        probes.append(window.summary())
        log(f"  {rate:.3f} req/s: {'sustained' if window.sustained() else 'not sustained'} "
            f"({json.dumps({t: v['p50'] for t, v in probes[-1]['tasks'].items()})} p50 s)")
        good, bad = (rate, None) if window.sustained() else (good, rate)
        rate *= 2
    for _ in range(steps):
        rate = (good + bad) / 2 if good else bad / 2
        window = asyncio.run(run_window(url, requests, rate, seconds, seed=len(probes)))
        probes.append(window.summary())
        log(f"  {rate:.3f} req/s: {'sustained' if window.sustained() else 'not sustained'}")
        good, bad = (rate, bad) if window.sustained() else (good, rate)
    return good, probes
