"""`GET /metrics`: the server's state in the Prometheus text format (prometheus-client).

    alter_requests_total{task, status}     items answered, by task and HTTP status
    alter_request_seconds{task}            latency histogram (a stream: until its first event)
    alter_queue_depth                      items waiting for the worker
    alter_running_rows                     generations in the running batch (continuous)
    alter_generated_tokens_total           tokens written by generations

A task label is one of the model's tasks or `(other)`: a client's unknown task names are
counted under that one value, so no client can grow the series without bound (and no task
can be named so: a task name holds no parentheses).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
OTHER_TASK = "(other)"


class ServerMetrics:
    def __init__(self, tasks: Collection[str], queue_depth: Callable[[], int], running_rows: Callable[[], int],
                 generated_tokens: Callable[[], int]):
        self.tasks = frozenset(tasks)  # the only task label values besides OTHER_TASK
        self.registry = CollectorRegistry()  # one per app: several servers in one process stay apart
        self.requests = Counter("alter_requests", "Items answered, by task and HTTP status", ["task", "status"],
                                registry=self.registry)
        self.latency = Histogram("alter_request_seconds", "Seconds from arrival to answer, by task", ["task"],
                                 buckets=BUCKETS, registry=self.registry)
        Gauge("alter_queue_depth", "Items waiting for the worker", registry=self.registry).set_function(queue_depth)
        Gauge("alter_running_rows", "Generations in the running batch", registry=self.registry
              ).set_function(running_rows)
        self.registry.register(_TokenCount(generated_tokens))

    def observe(self, tasks: Iterable[str], status: int, seconds: float) -> None:
        for task in tasks:
            task = task if task in self.tasks else OTHER_TASK
            self.requests.labels(task=task, status=str(status)).inc()
            if status < 400:
                self.latency.labels(task=task).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _TokenCount:
    """A counter read from the scheduler, which counts the tokens as its rows finish."""

    def __init__(self, read: Callable[[], int]):
        self.read = read

    def collect(self):
        yield CounterMetricFamily("alter_generated_tokens", "Tokens written by generations", value=self.read())
