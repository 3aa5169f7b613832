"""Load on `alter serve`: N concurrent clients on loopback for a fixed time, with dynamic
batching on and then off; requests/s, p50 and p99 latency (overall and per task), and errors.

    .venv/bin/python bench/serve_load.py CHECKPOINT [--clients 16] [--seconds 30] [--json]

Each client sends one request at a time (one item of a task drawn in turn from the model's
tasks, a dev example of that task) and sends the next when the answer comes. The server is
started by this script (`alter serve`, a free port) once per setting and stopped after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from alter.data.task import Task, TaskSpec, data_root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_requests(checkpoint: Path, per_task: int = 8) -> list[dict]:
    """A few dev examples of every task of the checkpoint, interleaved."""
    meta = json.loads((checkpoint / "alter.json").read_text())
    tasks = [Task(TaskSpec.model_validate(spec)) for spec in meta["tasks"]]
    root = data_root()
    per = [[{"task": task.name, "inputs": example.inputs} for example in task.read("dev", root)[:per_task]]
           for task in tasks]
    return [group[i] for i in range(per_task) for group in per if i < len(group)]


def start_server(checkpoint: Path, port: int, batching: bool) -> subprocess.Popen:
    # The static scheduler, batching on or off: what docs/serving.md measured (the continuous
    # scheduler's open-loop comparison is issue 16's benchmark, not yet written).
    command = [sys.executable, "-m", "alter.cli", "serve", str(checkpoint), "--port", str(port),
               "--scheduler", "static", "--batching" if batching else "--no-batching"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"alter serve exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("alter serve did not answer /health within 300 s")


async def load(port: int, requests: list[dict], clients: int, seconds: float) -> dict:
    latencies: list[tuple[str, float]] = []  # (task, seconds) of every answered request
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        turn = index
        while time.perf_counter() < stop_at:
            item = requests[turn % len(requests)]
            body = {"requests": [item]}
            turn += clients
            started = time.perf_counter()
            try:
                response = await http.post(f"http://127.0.0.1:{port}/v1/predict", json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append((item["task"], time.perf_counter() - started))
            else:
                errors += 1

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = time.perf_counter() - began
    ordered = sorted(seconds for _, seconds in latencies)
    tasks = sorted({task for task, _ in latencies})
    return {"requests_per_s": round(len(latencies) / elapsed, 2), "p50_ms": quantile_ms(ordered, 0.50),
            "p99_ms": quantile_ms(ordered, 0.99), "mean_ms": round(1000 * statistics.fmean(ordered), 1)
            if ordered else None, "answered": len(latencies), "errors": errors, "seconds": round(elapsed, 1),
            "p50_ms_by_task": {task: quantile_ms(sorted(s for t, s in latencies if t == task), 0.50)
                               for task in tasks}}


def quantile_ms(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted seconds, in milliseconds (NaN when there are none)."""
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    requests = sample_requests(args.checkpoint)
    results = {}
    for batching in (True, False):
        port = free_port()
        server = start_server(args.checkpoint, port, batching)
        try:
            results["batching_on" if batching else "batching_off"] = asyncio.run(
                load(port, requests, args.clients, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {"clients": args.clients, "seconds": args.seconds, "checkpoint": str(args.checkpoint), **results}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.clients} clients, {args.seconds:.0f} s each setting, one item per request, {args.checkpoint}")
    print(f"{'setting':<14} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, row in results.items():
        print(f"{name:<14} {row['requests_per_s']:>10} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['errors']:>7}")
        print(f"{'':<14} p50 ms by task: {json.dumps(row['p50_ms_by_task'])}")


if __name__ == "__main__":
    main()
