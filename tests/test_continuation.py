"""`starts_from.continue_stopped`: a stage that one early-stopping rule ended, trained on under
another, is the stage that rule trains from scratch, without its first steps trained again."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from alter.config import ConfigError, EarlyStoppingConfig
from alter.experiment.config import load_experiment
from alter.experiment.runner import copy_shared_stages, run_experiment
from alter.training.early_stopping import replay_whole_model


def _stage(patience: int) -> list[dict]:
    """One joint stage of at most 12 steps, checked every 2. A gain must exceed 50 macro points,
    so only the first check (the start) counts as one, and each rule stops after `patience`
    checks more."""
    return [{"kind": "joint", "steps": 12, "batch_size": 4, "lr": 1.0e-3, "eval_every": 2, "save_every": 2,
             "early_stopping": {"patience": patience, "min_delta": 50, "until_learned": False}}]


def _experiment(out) -> dict:
    continued = {"system": "hasty", "stage": "joint", "continue_stopped": True}
    return {
        "output_dir": str(out), "seeds": [0],
        "base": {"model": {"backbone": "tiny-llama", "max_source_length": 64, "max_target_length": 16,
                           "mta": {"enabled": False}, "lora": {"r": 4, "targets": ["q_proj", "v_proj"]}},
                 "data": {"validation": 4, "tasks": [{"name": "rte", "max_train": 16, "max_eval": 8},
                                                     {"name": "stsb", "max_train": 16, "max_eval": 8}]},
                 "stages": _stage(2), "eval": {"batch_size": 8, "before_training": False}},
        "systems": {"hasty": {},  # stops at step 4
                    "patient": {"starts_from": continued, "set": {"stages": _stage(4)}},  # at step 8
                    "patient_from_scratch": {"set": {"stages": _stage(4)}},
                    "stricter": {"starts_from": continued, "set": {"stages": _stage(1)}}}}


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    out = tmp_path_factory.mktemp("continued")
    (out / "experiment.yaml").write_text(yaml.safe_dump(_experiment(out)))
    config = load_experiment(out / "experiment.yaml")
    run_experiment(config, only=["hasty", "patient", "patient_from_scratch"])
    return config, out / "seed0"


def _records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _without_timings(records):
    return [{key: value for key, value in record.items() if key not in ("elapsed_s", "tokens_per_s")}
            for record in records]


def test_a_stopped_stage_continued_is_the_run_its_new_rule_trains(continued):
    _, runs = continued
    hasty, patient, scratch = runs / "hasty", runs / "patient", runs / "patient_from_scratch"
    assert json.loads((hasty / "stages" / "joint" / "last" / "state.json").read_text())["step"] == 4
    assert json.loads((patient / "stages" / "joint" / "last" / "state.json").read_text())["step"] == 8
    # Weights, optimizer and RNG where the patient rule stopped: the same bytes either way.
    assert (patient / "stages" / "joint" / "last" / "state.safetensors").read_bytes() == \
        (scratch / "stages" / "joint" / "last" / "state.safetensors").read_bytes()
    # One log, as a run from scratch writes it: hasty's stop is not in it.
    assert _without_timings(_records(patient)) == _without_timings(_records(scratch))
    assert [record["step"] for record in _records(patient) if "early_stopped" in record] == [8]
    assert json.loads((patient / "predictions_final.json").read_text()) == \
        json.loads((scratch / "predictions_final.json").read_text())
    # Its cost is the whole stage's: its clock went on from hasty's, and hasty's steps count too.
    result = json.loads((patient / "result.json").read_text())
    assert result["continues"] == "hasty: joint" and "shared_stages" not in result
    hasty_spent, patient_spent = (json.loads((run / "stages" / "joint" / "last" / "state.json").read_text())
                                  ["wall_seconds"] for run in (hasty, patient))
    assert patient_spent > hasty_spent
    assert result["train_seconds"] == pytest.approx(patient_spent, abs=0.01)


def test_a_rule_that_would_have_stopped_sooner_is_refused(continued):
    config, runs = continued
    with pytest.raises(ConfigError, match="would have ended the stage at step 2, before the 4"):
        copy_shared_stages(config, "stricter", 0, runs / "stricter")


def test_a_log_without_the_checks_that_stopped_the_stage_is_refused(continued, tmp_path):
    config, runs = continued
    copy = tmp_path / "seed0"
    shutil.copytree(runs / "hasty", copy / "hasty")
    log = copy / "hasty" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("".join(line + "\n" for line in lines if not ('"eval_macro"' in line and '"step": 2,' in line)))
    moved = config.model_copy(update={"output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="does not leave the stage as its checkpoint at step 4 says"):
        copy_shared_stages(moved, "patient", 0, copy / "patient")


def test_the_replay_counts_no_patience_while_a_task_is_at_its_trivial_score():
    floors = {"cola": 0.0, "rte": 0.5}
    checks = [(40.0, {"cola": 0.0, "rte": 0.6}), (39.0, {"cola": 0.0, "rte": 0.55}),
              (38.0, {"cola": 0.0, "rte": 0.55}), (37.0, {"cola": 0.1, "rte": 0.5}), (36.0, {"cola": 0.1, "rte": 0.6})]
    waiting, plain = EarlyStoppingConfig(patience=2), EarlyStoppingConfig(patience=2, until_learned=False)
    assert replay_whole_model(plain, floors, checks) == (2, 2)  # stops at the third check
    assert replay_whole_model(waiting, floors, checks) == (1, None)  # only the last check counted


def test_a_source_folder_without_its_checkpoint_is_named(continued, tmp_path):
    config, runs = continued
    (tmp_path / "seed0" / "hasty").mkdir(parents=True)
    for kept in (runs / "hasty").iterdir():  # what docs/ keeps of a run: its files, no stages
        if kept.is_file():
            shutil.copy(kept, tmp_path / "seed0" / "hasty")
    moved = config.model_copy(update={"output_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no checkpoint of 'hasty'"):
        copy_shared_stages(moved, "patient", 0, tmp_path / "seed0" / "patient")
