"""alter: small language models as multi-task learners with Mixture-of-Task-Adapters.

    import alter

    model = alter.MTAModel.from_backbone("smollm2-135m", tasks=["sst2", "rte"],
                                         mta=alter.MTAConfig(kind="lora", rank=8))
    result = alter.train(model, [alter.Stage("stage1", steps=100), alter.Stage("stage2", steps=10)],
                         output_dir="runs/mine")
    model.save_pretrained("out/")
    alter.MTAModel.from_pretrained("out/").predict([{"task": "sst2", "inputs": {"sentence": "a fine film"}}])

docs/python.md walks through it; the `alter` command line runs the same functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first use, so that `alter --help` stays fast.
_EXPORTS = {
    "MTAModel": "alter.model",
    "MTAConfig": "alter.mta.config",
    "LoraConfig": "alter.config",  # the shared LoRA of the baselines (`SharedLoraConfig`)
    "ModelConfig": "alter.config",
    "Stage": "alter.config",
    "EvalConfig": "alter.config",
    "DataConfig": "alter.config",
    "Task": "alter.data.task",
    "TaskSpec": "alter.data.task",
    "GenerationSettings": "alter.generation",
    "train": "alter.library",
    "TrainResult": "alter.library",
    "Report": "alter.evaluate.report_data",
    "resolve_backbone": "alter.backbones",
    "load": "alter.trainable",  # any saved system: an MTAModel or a Bi-LSTM
    "TrainableModel": "alter.trainable",
}
_RENAMED = {"Stage": "StageConfig", "LoraConfig": "SharedLoraConfig", "load": "load_model"}

__all__ = [  # the names of _EXPORTS, spelt out for linters and `from alter import *`
    "DataConfig", "EvalConfig", "GenerationSettings", "LoraConfig", "MTAConfig", "MTAModel", "ModelConfig", "Report",
    "Stage", "Task", "TaskSpec", "TrainResult", "TrainableModel", "__version__", "load", "resolve_backbone", "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alter' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what editors and type checkers see
    from alter.backbones import resolve_backbone
    from alter.config import DataConfig, EvalConfig, ModelConfig
    from alter.config import SharedLoraConfig as LoraConfig
    from alter.config import StageConfig as Stage
    from alter.data.task import Task, TaskSpec
    from alter.evaluate.report_data import Report
    from alter.generation import GenerationSettings
    from alter.library import TrainResult, train
    from alter.model import MTAModel
    from alter.mta.config import MTAConfig
    from alter.trainable import TrainableModel
    from alter.trainable import load_model as load
