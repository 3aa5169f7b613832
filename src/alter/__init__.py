"""alter: small language models as multi-task learners with Mixture-of-Task-Adapters.

    import alter

    model = alter.MTAModel.from_backbone("smollm2-135m", tasks=["sst2", "rte"])
    result = alter.train(model, [alter.Stage("stage1", steps=100), alter.Stage("stage2", steps=10)],
                         output_dir="runs/mine")
    model.save("out/")
    alter.load("out/").predict([{"task": "sst2", "inputs": {"sentence": "a fine film"}}])

docs/python.md walks through it; the `alter` command line runs the same functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first use, so that `alter --help` stays fast.
# Every name is its definition's own, but for one alias: `Stage` is `StageConfig` (a stage of
# `alter.train`, spelt as configs' `stages:` items are read).
_EXPORTS = {
    "MTAModel": "alter.models.mta_model",
    "MTAConfig": "alter.mta.config",
    "SharedLoraConfig": "alter.config",  # the one PEFT LoRA of the baselines without task modules
    "ModelConfig": "alter.config",
    "StageConfig": "alter.config",
    "Stage": "alter.config",
    "EvalConfig": "alter.config",
    "DataConfig": "alter.config",
    "Task": "alter.data.task",
    "TaskSpec": "alter.data.spec",
    "GenerationSettings": "alter.data.generation",
    "train": "alter.library",
    "TrainResult": "alter.library",
    "Report": "alter.evaluate.report_data",
    "resolve_backbone": "alter.backbones",
    "load": "alter.models.loading",  # any saved system: an MTAModel or a Bi-LSTM
    "TrainableModel": "alter.models.contract",
    "with_task_added": "alter.models.task_surgery",  # a new task beside trained ones, which stay as they are
    "with_task_removed": "alter.models.task_surgery",
    "TaskSurgeryError": "alter.models.task_surgery",
}
_ALIASES = {"Stage": "StageConfig"}

__all__ = [  # the names of _EXPORTS, spelt out for linters and `from alter import *`
    "DataConfig", "EvalConfig", "GenerationSettings", "MTAConfig", "MTAModel", "ModelConfig", "Report",
    "SharedLoraConfig", "Stage", "StageConfig", "Task", "TaskSpec", "TaskSurgeryError", "TrainResult", "TrainableModel",
    "__version__", "load", "resolve_backbone", "train", "with_task_added", "with_task_removed",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alter' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what editors and type checkers see
    from alter.backbones import resolve_backbone
    from alter.config import DataConfig, EvalConfig, ModelConfig, SharedLoraConfig, StageConfig
    from alter.config import StageConfig as Stage
    from alter.data.generation import GenerationSettings
    from alter.data.spec import TaskSpec
    from alter.data.task import Task
    from alter.evaluate.report_data import Report
    from alter.library import TrainResult, train
    from alter.models.contract import TrainableModel
    from alter.models.loading import load
    from alter.models.mta_model import MTAModel
    from alter.models.task_surgery import TaskSurgeryError, with_task_added, with_task_removed
    from alter.mta.config import MTAConfig
