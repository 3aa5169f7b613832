"""Time one training step on SmolLM2-135M (batch 8 x 128 tokens) for MTA stage 1 and stage 2
with bottleneck experts, MTA stage 1 with the default experts (LoRA r=8 on q_proj, v_proj and a
shared expert), PEFT LoRA (r=8 on q_proj, v_proj) and full fine-tuning, side by side in one run.

    .venv/bin/python bench/train_step.py [--rounds 3] [--json] [--only METHOD] [--backbone NAME]

Every method runs the same causal-LM loss on the same random tokens, forward + backward +
AdamW step. Rounds interleave the methods so that a noisy machine affects all alike; the
median step time of each method is reported, and its ratio to PEFT LoRA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

from alter.backbones import resolve_backbone
from alter.mta import ExpertModule, MTAConfig, inject_mta, routing
from alter.mta.plan import ExpertPlan

BATCH, LENGTH, TASKS = 8, 128, 4
METHODS = ["mta_stage1", "mta_stage2", "mta_default_stage1", "peft_lora", "full"]


def load(location: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(location, dtype="float32")
    model.requires_grad_(False)
    return model


def mta_model(location: str, stage: str, config: MTAConfig | None = None) -> tuple[torch.nn.Module,
                                                                                  list[torch.nn.Parameter]]:
    """Bottleneck experts (rank 16) in every layer, one per task; or `config`'s experts."""
    model = load(location)
    config = config or MTAConfig(kind="bottleneck", num_experts=TASKS, rank=16, layers="all")
    layers = inject_mta(model, config, ExpertPlan(torch.arange(TASKS), TASKS, shared=config.shared_expert))
    if stage == "stage2":
        for layer in layers:
            layer.gate.start_collaboration("softmax", 0.8)
        params = [p for layer in layers for p in layer.gate.parameters()]
    else:
        params = [p for module in model.modules() if isinstance(module, ExpertModule)
                  for p in module.expert_parameters()]
    for param in params:
        param.requires_grad_(True)
    return model, params


def peft_model(location: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load(location), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    return model, [p for p in model.parameters() if p.requires_grad]


def full_model(location: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    model = load(location)
    model.requires_grad_(True)
    return model, list(model.parameters())


def step_function(model: torch.nn.Module, params: list[torch.nn.Parameter], routed: bool,
                  tasks: int = TASKS) -> Callable[[], float]:
    """One timed training step (seconds) on a mixed batch of `tasks` tasks (row i: task i mod tasks)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = min(40000, model.config.vocab_size)
    input_ids = torch.randint(100, vocab, (BATCH, LENGTH), generator=generator)  # (B, T)
    task_ids = torch.arange(BATCH) % tasks  # a mixed-task batch

    def step() -> float:
        started = time.perf_counter()
        if routed:
            with routing(task_ids):
                loss = model(input_ids=input_ids, labels=input_ids).loss
        else:
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--only", choices=METHODS, help="one method alone (to measure its peak memory)")
    parser.add_argument("--backbone", default="smollm2-135m")
    args = parser.parse_args()
    torch.manual_seed(0)
    location = resolve_backbone(args.backbone)
    builders = {
        "mta_stage1": lambda: (*mta_model(location, "stage1"), True),
        "mta_stage2": lambda: (*mta_model(location, "stage2"), True),
        "mta_default_stage1": lambda: (*mta_model(location, "stage1", MTAConfig(num_experts=TASKS)), True),
        "peft_lora": lambda: (*peft_model(location), False),
        "full": lambda: (*full_model(location), False),
    }
    if args.only:
        builders = {args.only: builders[args.only]}
    steps, trainable = {}, {}
    for name, build in builders.items():
        model, params, routed = build()
        model.train()
        steps[name] = step_function(model, params, routed)
        trainable[name] = sum(p.numel() for p in params)
        steps[name]()  # warm-up: first-call allocations
    times: dict[str, list[float]] = {name: [] for name in builders}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step())
    tokens_per_s = {name: BATCH * LENGTH / statistics.median(values) for name, values in times.items()}
    reference = tokens_per_s.get("peft_lora", float("nan"))
    ratios = {name: value / reference for name, value in tokens_per_s.items()}
    result = {"tokens_per_s": {k: round(v, 1) for k, v in tokens_per_s.items()},
              "ratio_to_peft_lora": {k: round(v, 3) for k, v in ratios.items()},
              "trainable_params": trainable, "batch": [BATCH, LENGTH], "rounds": args.rounds,
              "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result))
        return
    print(f"one training step, SmolLM2-135M, batch {BATCH} x {LENGTH}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds}")
    print(f"{'method':<19} {'tokens/s':>9} {'x PEFT LoRA':>12} {'trainable':>12}")
    for name in builders:
        print(f"{name:<19} {tokens_per_s[name]:>9.1f} {ratios[name]:>12.3f} {trainable[name]:>12,}")


if __name__ == "__main__":
    main()
