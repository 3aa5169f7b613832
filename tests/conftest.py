"""Shared fixtures: tiny random backbones (no download) and small samples of the real data."""

from __future__ import annotations

import os

import pytest
import torch

from alter.config import ModelConfig
from alter.data.registry import builtin_registry
from alter.data.task import data_root
from alter.mta import MTAConfig


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Tiny backbones are built once per session; packaged ones keep the user's cache.
    os.environ.setdefault("ALTER_CACHE_DIR", str(tmp_path_factory.mktemp("alter-cache")))
    torch.set_num_threads(2)


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
    from alter.data.prepare import StageData

    rows = [model.encode(samples[name][:per_task]) for name in rates]
    return StageData(rows=rows, rates=list(rates.values()), task_names=list(rates))
