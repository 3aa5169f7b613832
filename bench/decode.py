"""Generation speed of alter's inference settings beside llama.cpp, on the same model, prompts
and machine, in one run; and what each setting does to the scores.

    .venv/bin/python bench/decode.py [--model runs/quickstart/model] [--json docs/results/decode.json]
    make bench-peers   # builds llama-cpp-python from source (about 10 minutes) for the llama.cpp rows

Engines, each in a process of its own (so that its peak memory is its own and nothing of one
warms the other): alter with `inference.quantize` none (float32) and int8, and llama.cpp
(llama-cpp-python, 2 threads) on the GGUF file that the backbone is packaged as; without
llama-cpp-python its rows are left out and the script says how to install it.

- single stream: the model's generation task's dev prompts (the quickstart's dialogsum,
  encoded by alter, the same token ids given to llama.cpp), one at a time, greedy, exactly
  `--new-tokens` new tokens (end of sequence suppressed); new tokens per second end to end
  (prompt pass included), summed over the prompts;
- prefill: prompt tokens per second of the prompt pass alone (one new token);
- batch16: 16 prompts at once (alter: one static batch; llama.cpp: one after another, as
  llama-cpp-python serves them), new tokens per second;
- peak memory: the process's peak resident set (MB);
- quality (alter only): the model's scores on the same dev examples under each setting, and
  how far the label probabilities of 100 sst2 sentences move from float32.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALTER_SETTINGS = ("none", "int8")
QUALITY_TASKS = {"sst2": 400, "rte": 277, "dialogsum": 50}


def prompts(model, count: int) -> list:
    """The first `count` dev examples of the model's generation task, encoded for it."""
    from alter.data.task import data_root

    task = next((task for task in model.tasks if task.kind == "generation"), None)
    if task is None:
        raise SystemExit("bench/decode.py needs a model with a generation task (e.g. runs/quickstart/model)")
    return model.encode(task.read("dev", data_root())[:count], with_target=False)


@contextlib.contextmanager
def no_end_of_sequence(model):
    """Every generation writes its full budget: the backbone's end-of-sequence ids are unset."""
    config = model.backbone.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None
    try:
        yield
    finally:
        config.eos_token_id = saved


def time_alter(model, rows, new_tokens: int, batch_size: int) -> float:
    from alter.data.generation import GenerationSettings

    settings = [GenerationSettings(max_new_tokens=new_tokens, num_beams=1)] * len(rows)
    started = time.perf_counter()
    with no_end_of_sequence(model):
        model.predict_encoded(rows, batch_size=batch_size, settings=settings)
    return time.perf_counter() - started


def run_alter(args, quantize: str) -> dict:
    import torch

    import alter

    torch.set_num_threads(args.threads)
    model = alter.load(args.model, quantize)
    rows = prompts(model, max(args.prompts, 16))
    single = rows[: args.prompts]
    time_alter(model, single[:1], 4, 1)  # warm-up
    seconds = sum(time_alter(model, [row], args.new_tokens, 1) for row in single)
    prefill = sum(time_alter(model, [row], 1, 1) for row in single)
    batch = time_alter(model, rows[:16], args.new_tokens, 16)
    result = {"single_stream": len(single) * args.new_tokens / seconds,
              "prefill": sum(len(row.input_ids) for row in single) / prefill,
              "batch16": 16 * args.new_tokens / batch}
    if args.quality:
        result["quality"] = quality(model, args)
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def quality(model, args) -> dict:
    """The model's main scores on the same dev examples, and 100 sst2 label distributions."""
    from alter.config import EvalConfig
    from alter.data.task import data_root
    from alter.evaluate.evaluator import evaluate, main_score

    root = data_root()
    sets = {task.name: task.read("dev", root)[: QUALITY_TASKS.get(task.name, 200)] for task in model.tasks}
    metrics = evaluate(model, sets, EvalConfig(batch_size=16, max_new_tokens=48))
    scores = {task.name: 100 * main_score(task, metrics[task.name]) for task in model.tasks}
    probabilities = [dict(p[1]) for p in model.predict(sets["sst2"][:100])] if "sst2" in sets else []
    return {"scores": scores, "examples": {name: len(examples) for name, examples in sets.items()},
            "sst2_probabilities": probabilities}


def run_llama_cpp(args) -> dict:
    from llama_cpp import Llama

    import alter
    from alter.backbones import packaged_gguf

    model = alter.load(args.model, "none")  # for the prompts' token ids only
    rows = prompts(model, max(args.prompts, 16))
    llm = Llama(model_path=str(packaged_gguf(model.config.backbone)), n_threads=args.threads, n_ctx=1024,
                verbose=False)
    no_end = {llm.token_eos(): -1e9}

    def write(row, new_tokens: int) -> float:
        llm.reset()  # no prefix of an earlier prompt is reused
        started = time.perf_counter()
        llm.create_completion(list(row.input_ids), max_tokens=new_tokens, temperature=0.0, top_k=1,
                              repeat_penalty=1.0, logit_bias=no_end)
        return time.perf_counter() - started

    single = rows[: args.prompts]
    write(single[0], 4)  # warm-up
    seconds = sum(write(row, args.new_tokens) for row in single)
    prefill = sum(write(row, 1) for row in single)
    batch = sum(write(row, args.new_tokens) for row in rows[:16])
    return {"single_stream": len(single) * args.new_tokens / seconds,
            "prefill": sum(len(row.input_ids) for row in single) / prefill,
            "batch16": 16 * args.new_tokens / batch,
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_own_process(engine: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--engine", engine, "--out", out.name, "--model", args.model,
                   "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens),
                   "--threads", str(args.threads)] + (["--quality"] if args.quality else [])
        subprocess.run(command, check=True)
        return json.loads(Path(out.name).read_text())


def probability_agreement(reference: list[dict], other: list[dict]) -> dict:
    """How far label probabilities moved: the largest change, and the share of sentences whose
    every label probability is the same to the second decimal (|change| < 0.005)."""
    changes = [max(abs(a[label] - b[label]) for label in a) for a, b in zip(reference, other)]
    return {"sentences": len(changes), "max_abs_change": max(changes, default=0.0),
            "same_to_2_decimals": sum(change < 0.005 for change in changes) / max(len(changes), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/quickstart/model")
    parser.add_argument("--prompts", type=int, default=8, help="single-stream prompts")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:  # one engine, in its own process
        result = run_llama_cpp(args) if args.engine == "llama_cpp" else run_alter(args, args.engine.split("_")[-1])
        Path(args.out).write_text(json.dumps(result))
        return
    engines = {f"alter_{'fp32' if q == 'none' else q}": f"alter_{q}" for q in ALTER_SETTINGS}
    if importlib.util.find_spec("llama_cpp"):
        engines["llama_cpp"] = "llama_cpp"
    else:
        print("llama.cpp rows left out: llama-cpp-python is not installed (make bench-peers, or "
              ".venv/bin/pip install llama-cpp-python==0.3.36: it builds from source, about 10 minutes)")
    measured = {name: in_own_process(engine, args) for name, engine in engines.items()}
    report = {section: {name: round(m[section], 1) for name, m in measured.items()}
              for section in ("single_stream", "batch16", "prefill", "peak_memory_mb")}
    if "llama_cpp" in measured:
        report["ratio_to_llama_cpp"] = {
            section: {name: round(m[section] / measured["llama_cpp"][section], 2) for name, m in measured.items()
                      if name != "llama_cpp"} for section in ("single_stream", "batch16", "prefill")}
    if args.quality:
        reference = measured["alter_fp32"]["quality"]
        report["quality"] = {name: {"scores": {t: round(v, 2) for t, v in m["quality"]["scores"].items()},
                                    **({"sst2_probabilities_vs_fp32": probability_agreement(
                                        reference["sst2_probabilities"], m["quality"]["sst2_probabilities"])}
                                       if reference["sst2_probabilities"] else {})}
                             for name, m in measured.items() if "quality" in m}
        report["quality"]["examples"] = reference["examples"]
    report["settings"] = {"model": args.model, "prompts": args.prompts, "new_tokens": args.new_tokens,
                          "threads": args.threads, "greedy": True}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
