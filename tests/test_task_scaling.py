"""bench/task_scaling.py on a tiny backbone: every figure of docs/results/task-scaling.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_task_scaling_reports_every_k_against_peft():
    out = subprocess.run([sys.executable, str(BENCH / "task_scaling.py"), "--experts", "2", "8", "--rounds", "1",
                          "--backbone", "tiny-llama", "--json"], capture_output=True, text=True, timeout=600,
                         check=True)
    result = json.loads(out.stdout)
    for figure in ("training", "stage2_training", "forward", "generation", "peak_memory_gib",
                   "checkpoint_bytes_per_task"):
        assert set(result[figure]) == {"2", "8"} and all(value > 0 for value in result[figure].values()), figure
    assert result["peft_lora"] > 0 and result["peft_mixed_16"] > 0
    assert set(result["ratios"]) >= {"training_8_vs_2", "training_8_vs_peft_lora", "forward_8_vs_2",
                                     "forward_8_vs_peft_mixed_16"}
