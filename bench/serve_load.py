"""Load on `alter serve`, on loopback; the server is started by this script (`alter serve`,
a free port) once per setting and stopped after. Requests hold one item each, dev examples
of the model's tasks in turn; every other summary is streamed.

Open loop (the default; bench/open_loop.py): requests arrive as a Poisson process.

    .venv/bin/python bench/serve_load.py CHECKPOINT [--json] [--soak 600]
    .venv/bin/python bench/serve_load.py CHECKPOINT --rate 0.3

Without `--rate` it finds each scheduler's capacity (the highest rate it sustains), then
runs both schedulers at 50% and 80% of the static scheduler's capacity; per task p50 / p90
/ p99 seconds, the time to the first piece of streamed summaries, answered per second,
errors. `--label-wait-ms M` adds the continuous scheduler holding scored items up to M ms
while summaries are written (`continuous_wait`) to the windows. `--soak S` then holds the
continuous scheduler at 50% for S seconds and reports the server's resident memory.

Closed loop (`--closed-loop`): N clients each send one request at a time and the next when
the answer comes, with the static scheduler's batching on and then off.
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
from open_loop import Window, find_capacity, paired_p50_difference, run_window

from alter.data.spec import TaskSpec
from alter.data.task import Task, data_root

SCHEDULERS = ("static", "continuous")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_requests(checkpoint: Path, per_task: int = 8, stream_every: int = 0) -> list[dict]:
    """A few dev examples of every task of the checkpoint, interleaved; every
    `stream_every`-th summary streamed (0: none)."""
    meta = json.loads((checkpoint / "alter.json").read_text())
    tasks = [Task(TaskSpec.model_validate(spec)) for spec in meta["tasks"]]
    root = data_root()
    per = [[{"task": task.name, "inputs": example.inputs,
             **({"stream": True} if task.kind == "generation" and stream_every and i % stream_every == 0 else {})}
            for i, example in enumerate(task.read("dev", root)[:per_task])] for task in tasks]
    return [group[i] for i in range(per_task) for group in per if i < len(group)]


def start_server(checkpoint: Path, port: int, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "alter.cli", "serve", str(checkpoint), "--port", str(port), *options]
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


class Serving:
    """`alter serve` with some options on a free port, for a `with` block."""

    def __init__(self, checkpoint: Path, *options: str):
        self.checkpoint, self.options, self.port = checkpoint, options, free_port()

    def __enter__(self) -> Serving:
        self.server = start_server(self.checkpoint, self.port, *self.options)
        self.url = f"http://127.0.0.1:{self.port}/v1/predict"
        return self

    def warm_up(self, requests: list[dict]) -> None:
        """One request of each kind before a measured window (a new server's first passes
        pay one-off costs), as serving benchmarks warm up."""
        kinds = {(item["task"], bool(item.get("stream"))): item for item in requests}
        for item in kinds.values():
            httpx.post(self.url, json={"requests": [item]}, timeout=600).raise_for_status()

    def __exit__(self, *_) -> None:
        self.server.terminate()
        self.server.wait(timeout=60)

    def rss_mb(self) -> float:
        """The server's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.server.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def closed_loop(args) -> dict:
    requests = sample_requests(args.checkpoint)
    results = {}
    for batching in (True, False):
        with Serving(args.checkpoint, "--scheduler", "static", "--batching" if batching else "--no-batching") as server:
            results["batching_on" if batching else "batching_off"] = asyncio.run(
                load(server.port, requests, args.clients, args.seconds))
    return {"clients": args.clients, "seconds": args.seconds, "checkpoint": str(args.checkpoint), **results}


def open_loop_runs(args, log) -> dict:
    requests = sample_requests(args.checkpoint, per_task=args.per_task, stream_every=2)
    capacity: dict[str, float] = {}
    probes: dict[str, list] = {}
    if args.capacity_from:  # the capacities a previous run of this script found
        earlier = json.loads(Path(args.capacity_from).read_text())
        capacity, probes = earlier["capacity_rps"], earlier["probes"]
        rates = {load: load * capacity["static"] for load in (0.5, 0.8)}
    elif args.rate is None:
        for scheduler in SCHEDULERS:
            log(f"capacity of the {scheduler} scheduler ({args.probe_seconds:.0f} s per probe)")
            with Serving(args.checkpoint, "--scheduler", scheduler) as server:
                server.warm_up(requests)
                capacity[scheduler], probes[scheduler] = find_capacity(
                    server.url, requests, args.start_rate, args.probe_seconds, args.bisections, log)
        rates = {load: load * capacity["static"] for load in (0.5, 0.8)}
    else:
        rates = {None: args.rate}
    settings = {scheduler: ("--scheduler", scheduler) for scheduler in SCHEDULERS}
    if args.label_wait_ms:
        settings["continuous_wait"] = ("--scheduler", "continuous", "--label-wait-ms", str(args.label_wait_ms))
    runs, paired = [], []
    for load, rate in rates.items():
        windows = {}
        for name, options in settings.items():
            with Serving(args.checkpoint, *options) as server:
                server.warm_up(requests)
                windows[name] = asyncio.run(run_window(server.url, requests, rate, args.seconds, seed=100))
            runs.append({"scheduler": name, "load": load, **windows[name].summary()})
            log(f"{name:>15} at {rate:.3f} req/s: " + ", ".join(
                f"{task} p50 {v['p50']} s" for task, v in runs[-1]["tasks"].items())
                + f"; ttft p50 {runs[-1]['ttft_p50']} s; errors {runs[-1]['errors']}")
        tasks = sorted({o.task for o in windows["static"].outcomes})
        paired.append({"load": load})
        for name in [name for name in settings if name != "static"]:  # each against static, request by request
            differences = {task: paired_p50_difference(windows["static"], windows[name], task) for task in tasks}
            paired[-1][f"{name}_minus_static"] = differences
            log(f"{name} - static p50 at {rate:.3f} req/s: " + ", ".join(
                f"{task} {d['p50_diff']:+.3f} s [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                for task, d in differences.items() if d))
    result = {"checkpoint": str(args.checkpoint), "capacity_rps": capacity, "runs": runs, "paired": paired,
              "probes": probes, "seconds": args.seconds, "label_wait_ms": args.label_wait_ms,
              **({"capacity_from": args.capacity_from} if args.capacity_from else {})}
    if args.soak:
        result["soak"] = soak(args, requests, 0.5 * capacity.get("static", args.rate or 0), log)
    return result


def soak(args, requests: list[dict], rate: float, log) -> dict:
    """The continuous scheduler at `rate` for `--soak` seconds; the server's memory sampled."""
    log(f"soak: the continuous scheduler at {rate:.3f} req/s for {args.soak:.0f} s")
    samples: list[tuple[float, float]] = []  # (seconds, MB)
    with Serving(args.checkpoint, "--scheduler", "continuous") as server:
        server.warm_up(requests)

        async def watched() -> Window:
            window = asyncio.create_task(run_window(server.url, requests, rate, args.soak, seed=200))
            began = time.perf_counter()
            while not window.done():
                samples.append((round(time.perf_counter() - began, 1), round(server.rss_mb(), 1)))
                await asyncio.sleep(5)
            return window.result()
        window = asyncio.run(watched())
    after_first_minute = next(mb for at, mb in samples if at >= 60) if samples[-1][0] >= 60 else samples[0][1]
    growth = samples[-1][1] / after_first_minute - 1
    log(f"soak: {after_first_minute:.0f} MB after the first minute, {samples[-1][1]:.0f} MB at the end "
        f"({100 * growth:+.1f}%), errors {window.errors}")
    return {"rate_rps": rate, "seconds": args.soak, "rss_mb_after_first_minute": after_first_minute,
            "rss_mb_end": samples[-1][1], "rss_growth": round(growth, 4), "rss_mb": samples, **window.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--closed-loop", action="store_true", help="N clients, one request at a time each")
    parser.add_argument("--clients", type=int, default=16, help="closed loop")
    parser.add_argument("--seconds", type=float, default=180, help="each run's window (closed loop: 30 is plenty)")
    parser.add_argument("--rate", type=float, help="open loop: this rate only, both schedulers (no capacity search)")
    parser.add_argument("--capacity-from", help="open loop: take the capacities from this earlier --json output")
    parser.add_argument("--start-rate", type=float, default=0.1, help="capacity search: the first probe's rate")
    parser.add_argument("--probe-seconds", type=float, default=60)
    parser.add_argument("--bisections", type=int, default=3)
    parser.add_argument("--per-task", type=int, default=24, help="distinct dev examples per task")
    parser.add_argument("--label-wait-ms", type=float, default=0,
                        help="open loop: also the continuous scheduler holding scored items up to this long")
    parser.add_argument("--soak", type=float, default=0, help="seconds of the soak at 50%% (0: none)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result (progress to stderr)")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    result = closed_loop(args) if args.closed_loop else open_loop_runs(args, log)
    if args.json:
        print(json.dumps(result))
    elif args.closed_loop:
        print_closed_loop(result)


def print_closed_loop(result: dict) -> None:
    print(f"{result['clients']} clients, {result['seconds']:.0f} s each setting, one item per request")
    print(f"{'setting':<14} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name in ("batching_on", "batching_off"):
        row = result[name]
        print(f"{name:<14} {row['requests_per_s']:>10} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['errors']:>7}")
        print(f"{'':<14} p50 ms by task: {json.dumps(row['p50_ms_by_task'])}")


if __name__ == "__main__":
    main()
