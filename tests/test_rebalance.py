"""Dynamic task adjustment (`stages[].rebalance`): rates that follow the tasks not learned yet."""

from __future__ import annotations

import json

import pytest
import torch

from alter.config import ConfigError, RebalanceConfig, StageConfig
from alter.data.mixture import batch_plan
from alter.training.rebalance import TaskPlan, rebalanced_rates
from alter.training.run import run_training
from tests.conftest import interrupt_at, model_config, saved_weights, stage_rows, tiny

# dialogsum, never above lead-2 on a tiny random model, gains rate at every check.
REBALANCED = ("data.validation=4", "data.mixture.sampling=manual", "data.mixture.rates={sst2: 0.8, dialogsum: 0.2}",
              "stages.0.rebalance.every=4", "stages.0.rebalance.max_rate=0.5", "eval.before_training=false")


def test_unlearned_tasks_gain_rate_up_to_the_cap_and_the_rates_sum_to_one():
    config = RebalanceConfig(every=10, boost=2.0, max_rate=0.5)
    rates = rebalanced_rates(["a", "b", "c"], [0.5, 0.3, 0.2], ["c"], config)
    assert rates == pytest.approx([0.5 / 1.2, 0.3 / 1.2, 0.4 / 1.2])
    capped = rebalanced_rates(["a", "b"], [0.7, 0.3], ["b"], config)  # 0.6 is capped at 0.5
    assert capped == pytest.approx([0.7 / 1.2, 0.5 / 1.2])
    assert rebalanced_rates(["a", "b"], [0.3, 0.7], ["b"], config) == pytest.approx([0.3, 0.7])  # never lowered
    assert rebalanced_rates(["a", "b"], [0.4, 0.6], [], config) == pytest.approx([0.4, 0.6])


def test_a_plan_redrawn_from_step_zero_is_the_stage_s_own_plan(registry, samples):
    """Runs without rebalance keep the batches they always had (and resume into them)."""
    from alter.models.mta_model import MTAModel

    tasks = [registry.get("sst2"), registry.get("stsb")]
    model = MTAModel(model_config("tiny-llama"), tasks)
    data = stage_rows(model, samples, {"sst2": 0.75, "stsb": 0.25})
    stage = StageConfig("stage1", steps=6, batch_size=2, grad_accum=2)
    plan = TaskPlan(data, stage, seed=3)
    expected = batch_plan([[len(row.input_ids) for row in rows] for rows in data.rows], data.rates, 12, 2, 3)
    assert [plan.batch(step, micro) for step in range(6) for micro in range(2)] == expected
    plan.redraw(4, [0.0, 1.0])
    assert plan.state() == {"rates": [0.0, 1.0], "rates_from_step": 4}
    assert all(task == 1 for step in (4, 5) for micro in (0, 1) for task, _ in plan.batch(step, micro))


def test_a_rebalanced_stage_logs_its_checks_and_resumes_to_the_samesaved_weights(tmp_path, monkeypatch):
    whole = run_training(tiny(tmp_path, "whole", *REBALANCED))
    records = [json.loads(line) for line in open(tmp_path / "whole/log.jsonl")]
    checks = [record for record in records if "not_learned" in record]
    assert [check["step"] for check in checks] == [4, 8]  # not at the stage's last step (12)
    assert all(set(check["rates"]) == {"sst2", "dialogsum"} for check in checks)
    assert all(sum(check["rates"].values()) == pytest.approx(1.0) for check in checks)
    assert "dialogsum" in checks[0]["not_learned"]
    assert checks[0]["rates"]["dialogsum"] == pytest.approx(0.4 / 1.2)  # sst2 keeps 0.8 either way
    for check in checks:
        for name, scores in check["not_learned"].items():
            assert scores["validation"] <= scores["trivial"] + 1e-9, name
    config = tiny(tmp_path, "resumed", *REBALANCED)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 6, RuntimeError)  # the last save, at step 4, followed that step's check
        with pytest.raises(RuntimeError):
            run_training(config)
    saved = json.loads((tmp_path / "resumed/stages/stage1/last/state.json").read_text())
    assert saved["step"] == 4 and saved["rates_from_step"] == 4
    resumed = run_training(config)
    assert resumed["metrics"] == whole["metrics"]
    full, again = saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "resumed")
    for name in full:
        assert torch.equal(full[name], again[name]), name


def test_rebalance_without_validation_examples_is_a_clear_error(tmp_path):
    config = tiny(tmp_path, "no-validation", "stages.0.rebalance.every=4")
    with pytest.raises(ConfigError, match="rebalance scores the validation examples; set data.validation"):
        run_training(config)
