"""How the cost of a row grows with the number of tasks: MTA with K tasks (one bottleneck
expert of rank 16 per task in all 30 layers of SmolLM2-135M, stage-1 gates) against PEFT
LoRA (r=8 on q_proj, v_proj), side by side in one run.

    .venv/bin/python bench/task_scaling.py [--experts 4 16 64 256] [--rounds 3] [--json]

For every K: training tokens/s (bench/train_step.py's step: batch 8 x 128, a mixed batch
whose row i is task i mod K, forward + backward + AdamW over the experts), the same with
the collaboration stage's sparse gates (softmax, top 2; only the gates train), forward
tokens/s of a mixed batch (16 x 128, row i of task i mod K), generation tokens/s (16 mixed
rows of 64 prompt tokens, 32 new tokens each, greedy), the peak memory of a process that
builds that model and takes one training step, and the bytes each task adds to the saved
weights. PEFT: one adapter (training, forward) and PEFT's mixed-adapter batch with 16
distinct adapters (`adapter_names`; forward, generation). Rounds interleave every
measurement so that a noisy machine affects all alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from suite import run  # noqa: E402 - bench/ is scripts, not a package
from train_step import BATCH, LENGTH, load, peft_model, step_function  # noqa: E402

from alter.backbones import resolve_backbone  # noqa: E402
from alter.mta import MTAConfig, inject_mta, routing  # noqa: E402
from alter.mta.plan import ExpertPlan  # noqa: E402

FORWARD_BATCH, PROMPT, NEW_TOKENS, PEFT_ADAPTERS = 16, 64, 32, 16


def mta_model(location: str, experts: int, stage: str = "stage1") -> tuple[torch.nn.Module, list]:
    """The backbone with K experts in every layer, one task each; the stage's trainable parameters."""
    model = load(location)
    config = MTAConfig(kind="bottleneck", num_experts=experts, rank=16, layers="all",
                       top_k=2 if stage == "stage2" else None)
    layers = inject_mta(model, config, ExpertPlan(torch.arange(experts), experts))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # experts that compute something, as after training
        for layer in layers:
            layer.experts.up.copy_(torch.randn(layer.experts.up.shape, generator=generator) * 0.02)
    if stage == "stage2":
        for layer in layers:
            layer.gate.start_collaboration("softmax", 0.8)
    params = [p for layer in layers for p in (layer.gate if stage == "stage2" else layer.experts).parameters()]
    for param in params:
        param.requires_grad_(True)
    return model, params


def tokens(rows: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(100, min(40000, vocab), (rows, length), generator=torch.Generator().manual_seed(1))


def forward_run(model: torch.nn.Module, experts: int | None, adapters: list[str] | None = None) -> Callable[[], None]:
    """A forward pass over 16 x 128 tokens, row i of task i mod K (`experts`; None: PEFT)."""
    input_ids = tokens(FORWARD_BATCH, LENGTH, model.config.vocab_size)
    task_ids = torch.arange(FORWARD_BATCH) % (experts or 1)
    extra = {"adapter_names": adapters} if adapters else {}

    def forward() -> None:
        with torch.no_grad():
            if experts is None:
                model(input_ids=input_ids, **extra)
            else:
                with routing(task_ids):
                    model(input_ids=input_ids)
    return forward


def generation_run(model: torch.nn.Module, experts: int | None,
                   adapters: list[str] | None = None) -> Callable[[], None]:
    """16 rows of 64 prompt tokens, 32 new tokens each, greedy."""
    input_ids = tokens(FORWARD_BATCH, PROMPT, model.config.vocab_size)
    task_ids = torch.arange(FORWARD_BATCH) % (experts or 1)
    settings = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                    attention_mask=torch.ones_like(input_ids), **({"adapter_names": adapters} if adapters else {}))

    def generate() -> None:
        with torch.no_grad():
            if experts is None:
                model.generate(input_ids=input_ids, **settings)
            else:
                with routing(task_ids):
                    model.generate(input_ids=input_ids, **settings)
    return generate


def peft_mixed(location: str) -> torch.nn.Module:
    """PEFT with 16 LoRA adapters (random, as after training) served in one batch."""
    from peft import LoraConfig, get_peft_model

    def lora() -> LoraConfig:
        return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)

    model = get_peft_model(load(location), lora(), adapter_name="task0")
    for index in range(1, PEFT_ADAPTERS):
        model.add_adapter(f"task{index}", lora())
    return model.eval()  # PEFT accepts `adapter_names` only in eval mode


def expert_bytes_per_task(model: torch.nn.Module, experts: int) -> float:
    """Bytes the saved experts and gates take per task (safetensors, float32)."""
    state = {name: value.detach().contiguous() for name, value in model.state_dict().items() if ".mta." in name}
    with tempfile.TemporaryDirectory() as folder:
        save_file(state, f"{folder}/experts.safetensors")
        return Path(f"{folder}/experts.safetensors").stat().st_size / experts


def peft_bytes_per_task(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return Path(folder, "adapter_model.safetensors").stat().st_size


def one_step(location: str, experts: int) -> None:
    """`--only K`: build the model and take one training step (its peak memory is measured outside)."""
    model, params = mta_model(location, experts)
    model.train()
    step_function(model, params, routed=True, tasks=experts)()


def peak_memory(experts: list[int], backbone: str) -> dict[str, float]:
    """GiB: the peak resident set of a process that builds K experts and takes one step."""
    return {str(k): round(run([sys.executable, __file__, "--only", str(k), "--backbone", backbone])[1], 2)
            for k in experts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--only", type=int, help="one training step with this many experts (peak memory)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    torch.manual_seed(0)
    location = resolve_backbone(args.backbone)
    if args.only:
        one_step(location, args.only)
        return
    # Before this process holds any model: a child's peak counts what it shared at the fork.
    memory = peak_memory(args.experts, args.backbone)
    train_tokens, forward_tokens, new_tokens = BATCH * LENGTH, FORWARD_BATCH * LENGTH, FORWARD_BATCH * NEW_TOKENS
    runs: dict[str, tuple[Callable[[], object], int]] = {}  # name -> (one measured call, its tokens)
    checkpoint_bytes = {}
    for k in args.experts:
        model, params = mta_model(location, k)
        runs[f"training/{k}"] = step_function(model.train(), params, routed=True, tasks=k), train_tokens
        runs[f"forward/{k}"] = forward_run(model, k), forward_tokens
        runs[f"generation/{k}"] = generation_run(model, k), new_tokens
        checkpoint_bytes[str(k)] = expert_bytes_per_task(model, k)
        gated, gates = mta_model(location, k, "stage2")
        runs[f"stage2_training/{k}"] = step_function(gated.train(), gates, routed=True, tasks=k), train_tokens
    lora, lora_params = peft_model(location)
    runs["peft_lora/training"] = step_function(lora.train(), lora_params, routed=False), train_tokens
    runs["peft_lora/forward"] = forward_run(lora, None), forward_tokens
    mixed = peft_mixed(location)
    names = [f"task{i % PEFT_ADAPTERS}" for i in range(FORWARD_BATCH)]
    runs[f"peft_mixed_{PEFT_ADAPTERS}/forward"] = forward_run(mixed, None, names), forward_tokens
    runs[f"peft_mixed_{PEFT_ADAPTERS}/generation"] = generation_run(mixed, None, names), new_tokens
    for call, _ in runs.values():
        call()  # warm-up: first-call allocations
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (call, _) in runs.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    per_s = {name: runs[name][1] / statistics.median(values) for name, values in times.items()}  # tokens/s
    result = report(args, per_s, checkpoint_bytes, memory, peft_bytes_per_task(lora))
    result["seconds_per_round"] = {name: [round(t, 3) for t in values] for name, values in times.items()}
    if args.json:
        print(json.dumps(result))
        return
    print_table(result)


def report(args, per_s: dict[str, float], checkpoint_bytes: dict[str, float], memory: dict[str, float],
           peft_bytes: int) -> dict:
    def by_k(kind: str) -> dict[str, float]:
        return {str(k): round(per_s[f"{kind}/{k}"], 1) for k in args.experts}

    training, forward = by_k("training"), by_k("forward")
    low, high = str(min(args.experts)), str(max(k for k in args.experts if k <= 64))
    peft_training, peft_mixed_forward = per_s["peft_lora/training"], per_s[f"peft_mixed_{PEFT_ADAPTERS}/forward"]
    return {
        "training": training, "stage2_training": by_k("stage2_training"), "forward": forward,
        "generation": by_k("generation"),
        "peft_lora": round(peft_training, 1), "peft_lora_forward": round(per_s["peft_lora/forward"], 1),
        f"peft_mixed_{PEFT_ADAPTERS}": round(peft_mixed_forward, 1),
        f"peft_mixed_{PEFT_ADAPTERS}_generation": round(per_s[f"peft_mixed_{PEFT_ADAPTERS}/generation"], 1),
        "peak_memory_gib": memory,
        "checkpoint_bytes_per_task": {k: round(v) for k, v in checkpoint_bytes.items()},
        "peft_lora_checkpoint_bytes": peft_bytes,
        "ratios": {
            f"training_{high}_vs_{low}": round(training[high] / training[low], 3),
            f"training_{high}_vs_peft_lora": round(training[high] / peft_training, 3),
            f"forward_{high}_vs_{low}": round(forward[high] / forward[low], 3),
            f"forward_{high}_vs_peft_mixed_{PEFT_ADAPTERS}": round(forward[high] / peft_mixed_forward, 3),
            **{f"stage2_vs_stage1_{k}": round(per_s[f"stage2_training/{k}"] / per_s[f"training/{k}"], 3)
               for k in args.experts},
        },
        "experts": args.experts, "rounds": args.rounds, "backbone": args.backbone,
        "threads": torch.get_num_threads(),
    }


def print_table(result: dict) -> None:
    print(f"{result['backbone']}, {result['threads']} threads, median of {result['rounds']} rounds; tokens/s")
    print(f"{'K':>5} {'training':>9} {'stage 2':>8} {'forward':>8} {'generation':>11} {'peak GiB':>9} "
          f"{'bytes/task':>11}")
    for k in map(str, result["experts"]):
        print(f"{k:>5} {result['training'][k]:>9.1f} {result['stage2_training'][k]:>8.1f} {result['forward'][k]:>8.1f} "
              f"{result['generation'][k]:>11.1f} {result['peak_memory_gib'][k]:>9.2f} "
              f"{result['checkpoint_bytes_per_task'][k]:>11,}")
    print(f"PEFT LoRA: training {result['peft_lora']}, forward {result['peft_lora_forward']}, "
          f"{result['peft_lora_checkpoint_bytes']:,} bytes; mixed batch of {PEFT_ADAPTERS} adapters: forward "
          f"{result[f'peft_mixed_{PEFT_ADAPTERS}']}, generation {result[f'peft_mixed_{PEFT_ADAPTERS}_generation']}")
    print("ratios:", json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
