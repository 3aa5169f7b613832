"""Training on 2 CPU processes (DDP or FSDP over gloo), launched by torchrun as a user would."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from alter.config import ConfigError, load_config
from alter.evaluate.ranks import Ranks
from alter.training.run import run_training

ALTER = str(Path(sys.executable).with_name("alter"))
# No evaluation before training, and no dropout anywhere (the tiny backbones have none):
# the only difference between 1 and 2 processes is the order of floating-point sums.
SETTINGS = ["eval.before_training=false", "data.max_eval=4"]


def torchrun(out: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--no-python", ALTER, "train", "configs/tiny.yaml", "--set", f"output_dir={out}"]
    for override in [*SETTINGS, *overrides]:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def one_process(out: Path, *overrides: str) -> dict:
    return run_training(load_config("configs/tiny.yaml", [f"output_dir={out}", *SETTINGS, *overrides]))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "trained.safetensors"))


def assert_close(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shard_and_unshard_cover_every_item_once():
    items = list(range(11))
    shards = [Ranks(rank, 3).shard(items) for rank in range(3)]
    assert sorted(sum(shards, [])) == items
    assert Ranks().unshard(items, len(items)) == items


def test_two_processes_reach_the_weights_of_one(tmp_path):
    launched = torchrun(tmp_path / "two")
    output, _ = launched.communicate(timeout=300)
    assert launched.returncode == 0, output
    one_process(tmp_path / "one")
    assert_close(weights(tmp_path / "two"), weights(tmp_path / "one"))
    # Written once: one log line per logged step, one report.
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    steps = [(r["stage"], r["step"]) for r in records if "loss" in r]
    assert len(steps) == len(set(steps))
    assert output.count("report: ") == 1


def test_fsdp_shards_the_backbone_and_reaches_the_weights_of_one_process(tmp_path):
    launched = torchrun(tmp_path / "fsdp", "distributed.strategy=fsdp")
    output, _ = launched.communicate(timeout=300)
    assert launched.returncode == 0, output
    # tiny-llama: 2 decoder blocks, each rank holding half of their weights.
    held, total = re.search(r"fsdp: 2 blocks sharded over 2 ranks; this rank holds ([\d,]+) of their ([\d,]+)",
                            output).groups()
    assert int(held.replace(",", "")) * 2 == int(total.replace(",", ""))
    one_process(tmp_path / "one")
    assert_close(weights(tmp_path / "fsdp"), weights(tmp_path / "one"))
    assert output.count("report: ") == 1


def test_fsdp_refuses_to_train_the_backbone():
    with pytest.raises(ConfigError, match=r"stages.0.train_backbone: distributed.strategy fsdp"):
        load_config("configs/tiny.yaml", ["distributed.strategy=fsdp", "stages.0.train_backbone=true"])


def _checkpoint_step(out: Path) -> int:
    try:
        return json.loads((out / "stages" / "stage1" / "last" / "state.json").read_text())["step"]
    except (OSError, ValueError):  # not written yet, or being replaced
        return 0


def test_killing_one_rank_then_resuming_on_one_process_ends_with_the_same_weights(tmp_path):
    steps = ["stages.0.steps=200", "stages.0.save_every=5"]
    launched = torchrun(tmp_path / "killed", *steps)
    deadline = time.monotonic() + 240
    while _checkpoint_step(tmp_path / "killed") < 10 and launched.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = [child for child in psutil.Process(launched.pid).children(recursive=True)
             if "RANK" in child.environ() and child.environ()["RANK"] == "1"]
    assert ranks, "no rank 1 process to kill: the run ended before its 10th step"
    ranks[0].send_signal(signal.SIGKILL)
    launched.communicate(timeout=120)
    assert launched.returncode != 0  # torchrun reports the lost rank and stops the other
    stopped_at = _checkpoint_step(tmp_path / "killed")
    assert 10 <= stopped_at < 200
    one_process(tmp_path / "killed", *steps)  # resumes on a different number of processes
    one_process(tmp_path / "whole", *steps)
    assert_close(weights(tmp_path / "killed"), weights(tmp_path / "whole"))


def test_a_batch_smaller_than_the_processes_is_refused(tmp_path):
    launched = torchrun(tmp_path / "small", "stages.0.batch_size=1")
    output, _ = launched.communicate(timeout=300)
    assert launched.returncode != 0
    assert "batch_size 1 is smaller than the 2 processes" in output
