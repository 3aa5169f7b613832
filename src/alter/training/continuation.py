"""Continue a stage that early stopping ended, under another stopping rule.

A whole-model stopping rule does not shape a stage's steps until it ends the stage, so a stage
that one rule ended at step N is, up to N, the same stage under any rule that would not have
ended it sooner: its checkpoint at N (weights, optimizer, data order, RNG) is where the other
rule's run stands at N. Only the stopper's count differs, and it is rebuilt here by replaying
the stage's validation checks from the run log under the new rule. This saves the N steps a
run under a laxer rule (`until_learned`, a longer `patience`) would otherwise repeat exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alter.config import Config, ConfigError, EarlyStoppingConfig
from alter.evaluate.trivial import trivial_main_scores, trivial_scores
from alter.training.datasets import load_tasks, load_training
from alter.training.early_stopping import replay_whole_model

STOP_RECORD = "early_stopped"  # the log line a stage writes when it ends with early stopping


def validation_floors(config: Config) -> dict[str, float]:
    """Each scored task's trivial main score (0-1) on its validation examples, as a run computes
    them for `until_learned`."""
    tasks = load_tasks(config)
    training = load_training(config, tasks)
    return trivial_main_scores(tasks, trivial_scores(tasks, training.train, training.validation))


def continue_stopped_stage(source: Path, target: Path, records: list[dict[str, Any]],
                           ended_by: EarlyStoppingConfig | None, config: Config, index: int) -> int:
    """Make the stage folder `target` (a copy of `source`, the stage that `ended_by` ended)
    continue under the early stopping of `config.stages[index]`; `records` are the stage's
    run-log lines. Returns the step it goes on from. Rewrites the copy's checkpoint only while
    it is still the source's (an interrupted continuation resumes from its own). Raises
    ConfigError where the continued stage would not be the one a run under `config` trains:
    per-task stopping, a log without the checks that ended the stage, or a rule that would have
    ended it sooner."""
    continued_by = config.stages[index].early_stopping
    if ended_by is None or continued_by is None:
        raise ConfigError(f"continue_stopped: stage {index} stops early in neither or only one of the two systems; "
                          "there is no stop to continue from")
    if ended_by.per_task or continued_by.per_task:
        raise ConfigError("continue_stopped: per-task stopping changes the mixture as each task stops, so a stage "
                          "stopped per task cannot be replayed under another rule; only whole-model stopping")
    meta = json.loads((source / "last" / "state.json").read_text())
    copied = target / "last" / "state.json"
    if json.loads(copied.read_text())["step"] != meta["step"]:
        return meta["step"]  # the continuation has trained (and saved) since: it resumes as it is
    saved = meta.get("early_stopping") or {}
    checks = [record for record in records if "eval_macro" in record and record["step"] <= meta["step"]]
    history = [(record["eval_macro"], record["eval_scores"]) for record in checks]
    floors = validation_floors(config) if ended_by.until_learned or continued_by.until_learned else {}
    if replay_whole_model(ended_by, floors, history) != (saved.get("waited"),
                                                         len(checks) - 1 if saved.get("finished") else None):
        raise ConfigError(f"continue_stopped: replaying the {len(checks)} validation checks in {source}'s run log "
                          f"does not leave the stage as its checkpoint at step {meta['step']} says: the log is "
                          "incomplete or the stage ran under other early_stopping settings")
    waited, ended_at = replay_whole_model(continued_by, floors, history)
    if ended_at is not None and ended_at < len(checks) - 1:
        raise ConfigError(f"continue_stopped: this system's early_stopping would have ended the stage at step "
                          f"{checks[ended_at]['step']}, before the {meta['step']} it is continued from")
    meta["early_stopping"] = {**saved, "waited": waited, "finished": ended_at is not None}
    copied.write_text(json.dumps(meta, indent=2))
    return meta["step"]
