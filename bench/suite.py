"""Every benchmark of the project in one run, and one table of what they measured.

    make bench     (or: .venv/bin/python bench/suite.py [--rounds 3] [--backbone smollm2-135m] [--json])

Each benchmark runs in its own process, so that its peak memory (resident set size) is its
own: bench/train_step.py (training tokens/s of MTA stage 1, stage 2, PEFT LoRA and full
fine-tuning, interleaved, and each method alone for its memory), bench/inference.py
(single-task, mixed-task, task-by-task and PEFT mixed-adapter batches), bench/task_scaling.py
(training, forward and generation tokens/s as the number of tasks grows) and `alter train
bench/ddp.yaml` on 1 process and under torchrun on 2 (the same global batch). Each
training method's FLOPs per step are set against this machine's measured matrix-multiply
rate (bench/flops.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig

from alter.backbones import resolve_backbone
from alter.config import load_config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from flops import matmul_gflops, training_flops_per_token  # noqa: E402

PYTHON = sys.executable
ALTER = str(Path(sys.executable).with_name("alter"))
METHODS = ["mta_stage1", "mta_stage2", "peft_lora", "full"]
QUICKSTART_STEPS = {stage.kind: stage.steps for stage in load_config(HERE.parent / "configs/quickstart.yaml").stages}


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """stdout of `command`, and its peak resident memory in GiB (for a launcher, that of its
    largest process: Linux counts the children a process waited for)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its own resource usage
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n{err.read()[-2000:]}")
        return out.read(), usage.ru_maxrss / 2**20  # KiB -> GiB


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def training_speed(args) -> dict:
    stdout, _ = run([PYTHON, str(HERE / "train_step.py"), "--json", "--rounds", str(args.rounds),
                     "--backbone", args.backbone])
    return last_json(stdout)


def training_memory(args) -> dict[str, float]:
    """Peak memory of each method alone (loading the backbone and one step)."""
    peaks = {}
    for method in METHODS:
        _, peaks[method] = run([PYTHON, str(HERE / "train_step.py"), "--json", "--rounds", "1",
                                "--only", method, "--backbone", args.backbone])
    return peaks


def inference(args) -> tuple[dict, float]:
    stdout, peak = run([PYTHON, str(HERE / "inference.py"), "--json", "--rounds", str(args.rounds),
                        "--backbone", args.backbone])
    return last_json(stdout), peak


def task_scaling(args) -> dict:
    stdout, _ = run([PYTHON, str(HERE / "task_scaling.py"), "--json", "--rounds", str(args.rounds),
                     "--backbone", args.backbone])
    return last_json(stdout)


def processes(args, out: Path) -> dict[str, dict]:
    """Stage 1 of bench/ddp.yaml on 1 process (2 threads) and on 2 (1 thread each)."""
    results = {}
    for count in (1, 2):
        target = out / f"ddp{count}"
        common = ["train", str(HERE / "ddp.yaml"), "--set", f"output_dir={target}",
                  "--set", f"model.backbone={args.backbone}"]
        if count == 1:
            command = [ALTER, *common]
        else:
            command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "--no-python", ALTER, *common]
        _, peak = run(command, env={"OMP_NUM_THREADS": "1"} if count == 2 else None)
        report = json.loads((target / "report.json").read_text())
        results[str(count)] = {"tokens_per_s": report["stages"]["stage1"]["tokens_per_s"], "peak_gib": peak}
    return results


def table(result: dict) -> str:
    train, memory, infer = result["training"], result["training_peak_gib"], result["inference"]
    lines = ["| measure | value | relative |", "|---|---|---|"]
    for method in METHODS:
        lines.append(f"| training tokens/s, {method} | {train['tokens_per_s'][method]:.1f} | "
                     f"{train['ratio_to_peft_lora'][method]:.3f}x PEFT LoRA |")
    for method in METHODS:
        lines.append(f"| training peak memory, {method} | {memory[method]:.2f} GiB | "
                     f"{train['trainable_params'][method]:,} trainable parameters |")
    for workload in ("scoring", "generation"):
        for way in ("mixed", "single", "task_by_task", "peft_mixed"):
            value = infer["tokens_per_s"][f"{workload}/{way}"]
            speedup = 1.0 if way == "mixed" else infer["detail_ratios"][f"{workload}/mixed_vs_{way}"]
            lines.append(f"| inference tokens/s, {workload}, {way} | {value:.1f} | mixed is {speedup:.3f}x |")
    lines.append(f"| inference peak memory (all ways in one process) | {result['inference_peak_gib']:.2f} GiB | |")
    per_task = result["params_per_task"]
    lines.append(f"| parameters added per task, MTA (rank-16 expert in every layer) | {per_task['mta']:,} | "
                 f"{per_task['mta'] / per_task['peft_lora']:.2f}x a PEFT LoRA |")
    lines.append(f"| parameters added per task, PEFT LoRA (r=8, q_proj and v_proj) | {per_task['peft_lora']:,} | |")
    cost = result["stage2_cost"]
    lines.append(f"| stage 2 step time / stage 1 step time | {cost['per_step']:.3f} | |")
    lines.append(f"| stage 2 / stage 1 wall time with the quickstart's steps ({QUICKSTART_STEPS['stage2']} vs "
                 f"{QUICKSTART_STEPS['stage1']}) | {cost['quickstart_run']:.3f} | |")
    rate = result["matmul_gflops"]
    lines.append(f"| float32 matmul rate, 1024 x 1024, this machine | {rate:.1f} GFLOP/s | |")
    for method, achieved in result["achieved_gflops"].items():
        lines.append(f"| training GFLOP/s achieved, {method} | {achieved:.1f} | {achieved / rate:.0%} of the matmul "
                     "rate |")
    scaling = result["task_scaling"]
    for k in map(str, scaling["experts"]):
        lines.append(f"| {k} tasks: training / forward / generation tokens/s | {scaling['training'][k]:.1f} / "
                     f"{scaling['forward'][k]:.1f} / {scaling['generation'][k]:.1f} | training "
                     f"{scaling['training'][k] / scaling['peft_lora']:.3f}x PEFT LoRA, forward "
                     f"{scaling['forward'][k] / scaling['peft_mixed_16']:.3f}x PEFT's 16-adapter batch |")
    one, two = result["processes"]["1"], result["processes"]["2"]
    lines.append(f"| training tokens/s, 1 process (2 threads) | {one['tokens_per_s']:.1f} | "
                 f"peak {one['peak_gib']:.2f} GiB |")
    lines.append(f"| training tokens/s, 2 processes (DDP, 1 thread each) | {two['tokens_per_s']:.1f} | "
                 f"{two['tokens_per_s'] / one['tokens_per_s']:.3f}x 1 process; peak {two['peak_gib']:.2f} GiB "
                 "per process |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alter-bench-") as scratch:
        memory = training_memory(args)
        speed = training_speed(args)
        infer, infer_peak = inference(args)
        scaling = task_scaling(args)
        ranks = processes(args, Path(scratch))
    trainable = speed["trainable_params"]
    torch.set_num_threads(speed["threads"])
    backbone_config = AutoConfig.from_pretrained(resolve_backbone(args.backbone))
    length = speed["batch"][1]
    achieved = {method: training_flops_per_token(backbone_config, length, method) * speed["tokens_per_s"][method] / 1e9
                for method in METHODS}
    stage1, stage2 = speed["tokens_per_s"]["mta_stage1"], speed["tokens_per_s"]["mta_stage2"]
    result = {
        "backbone": args.backbone, "rounds": args.rounds, "cpus": os.cpu_count(),
        "training": speed, "training_peak_gib": {k: round(v, 3) for k, v in memory.items()},
        "inference": infer, "inference_peak_gib": round(infer_peak, 3),
        # train_step.py gives MTA 4 experts (one per task) in every layer, PEFT one adapter.
        "params_per_task": {"mta": trainable["mta_stage1"] // 4, "peft_lora": trainable["peft_lora"]},
        "stage2_cost": {"per_step": round(stage1 / stage2, 3),
                        "quickstart_run": round(stage1 / stage2 * QUICKSTART_STEPS["stage2"]
                                                / QUICKSTART_STEPS["stage1"], 4)},
        "task_scaling": scaling,
        "processes": ranks,
        "matmul_gflops": round(matmul_gflops(), 1),
        "achieved_gflops": {k: round(v, 1) for k, v in achieved.items()},
        "flops_per_token": {k: training_flops_per_token(backbone_config, length, k) for k in METHODS},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"alter benchmarks, {args.backbone}, {os.cpu_count()} CPUs, median of {args.rounds} rounds")
    print(table(result))


if __name__ == "__main__":
    main()
