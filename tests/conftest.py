"""Shared fixtures: tiny random backbones (no download) and small samples of the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alter.config import ModelConfig, load_config
from alter.data.registry import builtin_registry
from alter.data.task import data_root
from alter.models.mta_model import MTAModel
from alter.mta import MTAConfig
from alter.training import loop

ROOT = Path(__file__).resolve().parents[1]  # the checkout: configs/, bench/


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Tiny backbones are built once per session; packaged ones keep the user's cache.
    os.environ.setdefault("ALTER_CACHE_DIR", str(tmp_path_factory.mktemp("alter-cache")))
    torch.set_num_threads(2)
    # Configs and benches are named relative to the checkout, whatever folder pytest starts in.
    os.chdir(ROOT)


@pytest.fixture(scope="session")
def registry():
    return builtin_registry()


@pytest.fixture(scope="session")
def samples(registry):
    """A few dev examples of a classification, a regression and a generation task."""
    root = data_root()
    return {name: registry.get(name).read("dev", root)[:4] for name in ("sst2", "stsb", "dialogsum", "rte")}


def model_config(backbone: str, head: str = "lm", **mta) -> ModelConfig:
    return ModelConfig(backbone=backbone, head=head, max_source_length=64, max_target_length=12,
                       mta=MTAConfig(**mta))


def randomise_experts(model, seed: int = 0) -> None:
    """Give zero-initialised expert outputs random values, so that experts matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.param_groups()["experts"].values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def stage_rows(model, samples, rates: dict[str, float], per_task: int = 4):
    """A stage's data from the first `per_task` samples of each task, at the given mixture rates."""
    from alter.training.datasets import StageData

    rows = [model.encode(samples[name][:per_task]) for name in rates]
    return StageData(rows=rows, rates=list(rates.values()), task_names=list(rates))


FAMILIES = [("tiny-llama", "lm"), ("tiny-t5", "lm"), ("tiny-bert", "classifier"), ("tiny-gpt2", "lm"),
            ("tiny-bart", "lm")]


def tasks_for(registry, head):
    names = ["sst2", "stsb"] if head == "classifier" else ["sst2", "stsb", "dialogsum"]
    return [registry.get(name) for name in names]


def examples_for(samples, head):
    return [e for name in (["sst2", "stsb"] if head == "classifier" else ["sst2", "stsb", "dialogsum"])
            for e in samples[name][:3]]


def tiny(tmp_path, name: str, *overrides: str):
    """configs/tiny.yaml, writing into `tmp_path / name`, with `overrides` (key=value)."""
    return load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path / name}", *overrides])


def scoring_probe_report(registry, tmp_path, script: str) -> dict:
    """The --json report of `bench/<script>` on a saved tiny-Llama MTA model of sst2 and rte,
    three dev examples a task (the scoring probes take a model folder and --per-task)."""
    MTAModel(model_config("tiny-llama"), [registry.get(name) for name in ("sst2", "rte")]).save(tmp_path / "m")
    command = [sys.executable, str(ROOT / "bench" / script), str(tmp_path / "m"), "--per-task", "3", "--json"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


def saved_weights(run) -> dict[str, torch.Tensor]:
    """The trained weights of the model a run saved."""
    return load_file(str(run / "model" / "trained.safetensors"))


def interrupt_at(monkeypatch, step: int, error: type[BaseException], stage: str = "stage1"):
    write = loop.RunLog.write

    def failing(self, record):
        write(self, record)
        if record.get("stage") == stage and record.get("step") == step:
            raise error()

    monkeypatch.setattr(loop.RunLog, "write", failing)
