"""Mixed-task inference on SmolLM2-135M: 16 requests of 4 tasks, (a) scored by rank
classification and (b) generated (40 new tokens each, greedy), in one run.

    .venv/bin/python bench/inference.py [--rounds 3] [--json] [--backbone smollm2-135m] [--quantize int8]

Four ways to answer the same 16 requests, timed side by side (rounds interleave them, the
median counts):
- mixed: one batch of all 16, task ids per row (MTA routes each row to its task's gates);
- single: the same 16 inputs as one task's batch (the cost of routing itself);
- task by task: the requests grouped by task, four batches of 4;
- mixed by length (scoring): the 16 requests as `MTAModel.predict` batches them, shortest first,
  a batch closed where the next row would pad it past 1.5x its tokens (`length_batches`), each
  batch still of mixed tasks;
- PEFT: one LoRA adapter per task (r=8 on q_proj, v_proj) and PEFT's mixed-adapter batch
  (`adapter_names`), the peer's way to serve several tasks in one batch;
- with `--quantize int8`, also the mixed batch of the same model in float32 (`mixed_fp32`), so
  that the fast path's gain is measured in the same rounds.
Each ratio is our mixed batch's throughput over the other's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import get_args

import torch

from alter.config import ModelConfig, Quantize
from alter.data.collate import Encoded, length_batches
from alter.data.registry import builtin_registry
from alter.data.task import data_root
from alter.models.mta_model import MTAModel
from alter.models.quantized import int8_prompts
from alter.mta import MTAConfig
from alter.mta.routing import routing

TASKS = ["sst2", "rte", "mrpc", "dialogsum"]
PER_TASK, NEW_TOKENS = 4, 40


def build_model(backbone: str) -> MTAModel:
    registry = builtin_registry()
    config = ModelConfig(backbone=backbone, max_source_length=128,
                         mta=MTAConfig(kind="bottleneck", rank=16, layers="all"))
    model = MTAModel(config, [registry.get(name) for name in TASKS]).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # experts that compute something, as after training
        for param in model.param_groups()["experts"].values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.start_collaboration("softmax", 0.8)
    return model


def requests(model: MTAModel) -> list[Encoded]:
    """4 dev examples of each task, interleaved as they would arrive."""
    root = data_root()
    examples = [model.tasks[i].read("dev", root)[j] for j in range(PER_TASK) for i in range(len(TASKS))]
    return model.encode(examples, with_target=False)


def scorer(model: MTAModel, rows: list[Encoded]) -> Callable[[], None]:
    """Logits at each prompt's last token: the one forward pass of rank classification."""
    batch = model.head.collate(rows, model.tokenizer)

    def run() -> None:
        with torch.no_grad(), routing(batch["task_ids"], batch["pool_masks"]):
            model.head.first_token_logprobs(model.backbone, batch)

    return run


def generator(model: MTAModel, rows: list[Encoded], new_tokens: int = NEW_TOKENS,
              cache: str | None = None) -> Callable[[], None]:
    """Greedy generation of exactly `new_tokens` per row; `cache` is transformers'
    `cache_implementation` (None: its dynamic cache)."""
    batch = model.head.collate(rows, model.tokenizer, side="left")

    def run() -> None:
        # int8_prompts: the prompt pass computes as alter's own generation does (LMHead.generate_ids).
        with torch.no_grad(), routing(batch["task_ids"], batch["pool_masks"]), int8_prompts():
            model.backbone.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id, cache_implementation=cache)

    return run


def as_one_task(rows: list[Encoded]) -> list[Encoded]:
    return [Encoded(0, row.input_ids) for row in rows]


def by_task(rows: list[Encoded]) -> list[list[Encoded]]:
    return [[row for row in rows if row.task_id == task] for task in range(len(TASKS))]


def peft_runs(model: MTAModel, rows: list[Encoded]) -> tuple[Callable[[], None], Callable[[], None]]:
    """PEFT with one LoRA per task on the plain backbone, mixed batch through `adapter_names`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alter.backbones import resolve_backbone

    base = AutoModelForCausalLM.from_pretrained(resolve_backbone(model.config.backbone), dtype="float32").eval()
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False), adapter_name=TASKS[0])
    for name in TASKS[1:]:
        peft.add_adapter(name, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False))
    peft.eval()  # PEFT accepts `adapter_names` only in eval mode
    names = [TASKS[row.task_id] for row in rows]
    right = model.head.collate(rows, model.tokenizer)
    left = model.head.collate(rows, model.tokenizer, side="left")
    last = right["attention_mask"].sum(1) - 1  # (B,)

    def score() -> None:
        with torch.no_grad():
            logits = peft(input_ids=right["input_ids"], attention_mask=right["attention_mask"],
                          adapter_names=names).logits  # (B, T, V)
            logits[torch.arange(len(rows)), last].log_softmax(-1)

    def generate() -> None:
        with torch.no_grad():
            peft.generate(input_ids=left["input_ids"], attention_mask=left["attention_mask"], adapter_names=names,
                          max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                          pad_token_id=model.tokenizer.pad_token_id)

    return score, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--quantize", choices=get_args(Quantize), default="none",
                        help="alter's inference.quantize (int8 decoding steps); PEFT's rows stay float32")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.backbone)
    model.set_inference(args.quantize)
    rows = requests(model)
    reference = None
    if args.quantize != "none":  # the same weights (same seed), computing in float32
        torch.manual_seed(0)
        reference = build_model(args.backbone)
    groups = by_task(rows)
    peft_score, peft_generate = peft_runs(model, rows)
    scoring_groups = [scorer(model, group) for group in groups]
    generation_groups = [generator(model, group) for group in groups]
    lengths = [len(row.input_ids) for row in rows]
    by_length = length_batches(range(len(rows)), lengths, len(rows))
    length_groups = [scorer(model, [rows[i] for i in batch]) for batch in by_length]
    runs: dict[str, Callable[[], None]] = {
        "scoring/mixed": scorer(model, rows),
        "scoring/single": scorer(model, as_one_task(rows)),
        "scoring/task_by_task": lambda: [run() for run in scoring_groups],
        "scoring/mixed_by_length": lambda: [run() for run in length_groups],
        "scoring/peft_mixed": peft_score,
        "generation/mixed": generator(model, rows),
        "generation/single": generator(model, as_one_task(rows)),
        "generation/task_by_task": lambda: [run() for run in generation_groups],
        "generation/peft_mixed": peft_generate,
    }
    if reference is not None:
        runs["scoring/mixed_fp32"] = scorer(reference, rows)
        runs["generation/mixed_fp32"] = generator(reference, rows)
    for run in runs.values():
        run()  # warm-up: first-call allocations
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    throughput = {name: len(rows) / statistics.median(values) for name, values in times.items()}  # requests/s
    # Tokens per request: the prompt read (scoring), the new tokens written (generation).
    tokens = {"scoring": statistics.mean(len(row.input_ids) for row in rows), "generation": NEW_TOKENS}

    def padded(batches: list[list[Encoded]]) -> int:
        return sum(len(batch) * max(len(row.input_ids) for row in batch) for batch in batches)

    def ratio(workload: str, other: str) -> float:
        return round(throughput[f"{workload}/mixed"] / throughput[f"{workload}/{other}"], 3)

    result = {
        "ratios": {
            "mixed_vs_single": min(ratio("scoring", "single"), ratio("generation", "single")),
            "mixed_vs_task_by_task_generation": ratio("generation", "task_by_task"),
            "mixed_vs_task_by_task_scoring": ratio("scoring", "task_by_task"),
            "mixed_vs_peft": min(ratio("scoring", "peft_mixed"), ratio("generation", "peft_mixed")),
        },
        "detail_ratios": {f"{w}/mixed_vs_{o}": ratio(w, o) for w in ("scoring", "generation")
                          for o in ("single", "task_by_task", "peft_mixed")
                          + (("mixed_by_length",) if w == "scoring" else ())
                          + (("mixed_fp32",) if reference is not None else ())},
        # What each way computes: a batch pads its rows to its longest.
        "scoring_padded_tokens": {"mixed": padded([rows]), "task_by_task": padded(groups),
                                  "mixed_by_length": padded([[rows[i] for i in batch] for batch in by_length]),
                                  "real": sum(lengths)},
        "requests_per_s": {name: round(value, 2) for name, value in throughput.items()},
        "tokens_per_s": {name: round(value * tokens[name.split("/")[0]], 1) for name, value in throughput.items()},
        "requests": len(rows), "tasks": TASKS, "new_tokens": NEW_TOKENS, "rounds": args.rounds,
        "backbone": args.backbone, "threads": torch.get_num_threads(), "quantize": args.quantize,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(rows)} requests of {len(TASKS)} tasks ({', '.join(TASKS)}), {args.backbone}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"{'workload/way':<26} {'requests/s':>11} {'mixed is x faster':>18}")
    for name, value in throughput.items():
        workload, way = name.split("/")
        speedup = "" if way == "mixed" else f"{ratio(workload, way):.3f}"
        print(f"{name:<26} {value:>11.2f} {speedup:>18}")
    print("ratios:", json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
