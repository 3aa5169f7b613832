"""What bounds a training step: its floating-point operations against the machine's measured
matrix-multiply rate.

A decoder-only transformer's forward pass costs, per token, 2 FLOPs per weight of its linear
layers, 2 x d x V for the output layer (train_step.py computes logits at every position),
and 4 x T x d per layer for attention (scores and the weighted sum over the T positions; the
CPU kernels compute the causal mask's upper half too). Backward costs about one forward for
the activation gradients and one more for the weight gradients: a method whose weights are
frozen (adapters, LoRA) pays the first, full fine-tuning both.
"""

from __future__ import annotations

import time

import torch
from transformers import PretrainedConfig

TRAINING_PASSES = {"mta_stage1": 2.0, "mta_stage2": 2.0, "peft_lora": 2.0, "full": 3.0}  # x one forward


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The best float32 matrix-multiply rate of this process (its torch threads), GFLOP/s."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def forward_flops_per_token(config: PretrainedConfig, length: int) -> float:
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size  # q, o; k, v; gate, up, down
    linear = 2 * layers * per_layer
    attention = 4 * layers * length * d
    output = 2 * d * config.vocab_size
    return float(linear + attention + output)


def training_flops_per_token(config: PretrainedConfig, length: int, method: str) -> float:
    return TRAINING_PASSES[method] * forward_flops_per_token(config, length)
