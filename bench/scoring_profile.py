"""Where scoring's time goes: float32 matrix products against this machine's own peak.

    .venv/bin/python bench/scoring_profile.py [runs/quickstart/model] [--per-task 100] [--json]

Scores the first dev examples of sst2 and rte (as `make demo`'s evaluation does: rank
classification, one float32 pass, rows batched by length) once to warm up under PyTorch's FLOP
counter, then once under its profiler. Without a saved model it scores the
untrained quickstart model (the backbone with zero-initialised experts), which costs the same.
Prints the seconds, the share of them spent in matrix products (`aten::mm`, `aten::bmm`), the
rate those products ran at, and the peak of one product of the backbone's own shapes timed
alone: when the first rate is the second, scoring runs at the hardware's float32 limit and
only fewer FLOPs (fewer examples, lower precision) make it faster.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import alter
from alter.data.task import data_root

TASKS = ("sst2", "rte")
MATRIX_PRODUCTS = ("aten::mm", "aten::bmm", "aten::addmm")


def timed(model, examples) -> float:
    started = time.perf_counter()
    model.predict(examples, batch_size=16)
    return time.perf_counter() - started


def peak_gflops(hidden: int, intermediate: int, rows: int = 1024, repeats: int = 20) -> float:
    """The best rate of the backbone's largest projection, (rows, hidden) @ (hidden, intermediate)."""
    x, w = torch.randn(rows, hidden), torch.randn(hidden, intermediate)
    for _ in range(3):
        x @ w
    started = time.perf_counter()
    for _ in range(repeats):
        x @ w
    return 2 * rows * hidden * intermediate * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="a saved model folder; the untrained quickstart model without")
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        model = (alter.load(args.model) if args.model
                 else alter.MTAModel.from_backbone("smollm2-135m", tasks=list(TASKS)))
    except FileNotFoundError as error:  # no saved model there: say so, as argparse says a bad flag
        parser.error(str(error))
    model.eval()
    root, tasks = data_root(), {task.name: task for task in model.tasks}
    examples = [example for name in TASKS if name in tasks
                for example in tasks[name].read("dev", root)[: args.per_task]]
    # The FLOPs are counted on the warm-up pass (allocator, kernels, cached candidate splits),
    # whose time is not used; the profiled pass after it gives the seconds.
    with FlopCounterMode(display=False) as counter:
        timed(model, examples)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        seconds = timed(model, examples)
    product_seconds = sum(event.self_cpu_time_total for event in profiler.key_averages()
                          if event.key in MATRIX_PRODUCTS) / 1e6
    flops = counter.get_total_flops()
    # The products' own FLOPs (not attention's, counted apart) over the products' own time.
    product_flops = sum(count for op, count in counter.get_flop_counts()["Global"].items()
                        if str(op).replace(".", "::") in MATRIX_PRODUCTS)
    config = model.backbone.config
    report = {"model": args.model or "untrained quickstart (smollm2-135m)", "examples": len(examples),
              "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
              "matrix_product_share": round(product_seconds / seconds, 3), "flops": flops,
              "matrix_product_gflops": round(product_flops / product_seconds / 1e9, 1),
              "overall_gflops": round(flops / seconds / 1e9, 1),
              "peak_gflops": round(peak_gflops(config.hidden_size, config.intermediate_size), 1)}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['examples']} examples scored in {report['seconds']} s on {report['threads']} threads: "
          f"{flops / 1e9:.1f} GFLOP, {report['matrix_product_share']:.0%} of the time in matrix products at "
          f"{report['matrix_product_gflops']} GFLOP/s ({report['overall_gflops']} overall); "
          f"one product of the backbone's shapes alone: {report['peak_gflops']} GFLOP/s")


if __name__ == "__main__":
    main()
