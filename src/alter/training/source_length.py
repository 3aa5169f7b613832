"""`model.max_source_length: auto`: the prompt length that fits the training data.

A fixed length is a guess that a user's data can silently miss: at the quickstart's former
160 tokens, 77% of its training dialogues lost their end. `auto` measures the prompts instead:
the length (rounded up to a multiple of 16) that holds `COVERAGE` of every task's training
prompts, at most `LONGEST` tokens and the backbone's positions. The run's report still counts
the inputs that were cut, per task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from alter.data.task import Example, Task
from alter.models.contract import TrainableModel

log = logging.getLogger(__name__)

COVERAGE = 0.95  # of each task's training prompts: a few outliers do not set everyone's cost
LONGEST = 1024  # tokens: attention's cost grows with the square of the length on a CPU
ROUND_TO = 16
MEASURED_PER_TASK = 2000  # prompts measured per task (evenly spaced): tokenising more changes little


def fitted_source_length(tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task],
                         train_sets: Mapping[str, Sequence[Example]], positions: int | None) -> int:
    """The smallest multiple of ROUND_TO that holds COVERAGE of every task's training prompts."""
    longest_needed = ROUND_TO
    for task in tasks:
        examples = train_sets.get(task.name, ())
        stride = max(1, math.ceil(len(examples) / MEASURED_PER_TASK))
        lengths = sorted(len(tokenizer(task.prompt(example.inputs))["input_ids"]) for example in examples[::stride])
        if lengths:
            longest_needed = max(longest_needed, lengths[math.ceil(COVERAGE * len(lengths)) - 1])
    fitted = math.ceil(longest_needed / ROUND_TO) * ROUND_TO
    return min(fitted, LONGEST, positions or LONGEST)


def fit_source_length(model: TrainableModel, tasks: Sequence[Task],
                      train_sets: Mapping[str, Sequence[Example]]) -> None:
    """Resolve `auto` in the model's config (which its heads read) before anything is encoded;
    a model saved afterwards holds the number."""
    if model.config.max_source_length != "auto":
        return
    backbone = getattr(getattr(model, "backbone", None), "config", None)  # none: a Bi-LSTM reads any length
    positions = getattr(backbone, "max_position_embeddings", None) or getattr(backbone, "n_positions", None)
    fitted = fitted_source_length(model.tokenizer, tasks, train_sets, positions)
    model.config.max_source_length = fitted
    log.info("model.max_source_length: auto -> %d tokens (%.0f%% of every task's training prompts fit)",
             fitted, 100 * COVERAGE)
