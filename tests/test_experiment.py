"""`alter experiment` on tiny random backbones: every system end to end, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alter.cli import app
from alter.config import ConfigError
from alter.experiment.config import load_experiment
from alter.experiment.runner import run_experiment

TINY = Path(__file__).parent.parent / "configs" / "experiment-tiny.yaml"
SYSTEMS = {"mta", "mta_stage1", "mta_joint", "single_lora", "multi_lora", "multi_full", "encoder", "bilstm", "lead"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    config = load_experiment(TINY, [f"output_dir={out}"])
    return config, run_experiment(config), out


def test_every_system_runs_end_to_end(finished):
    config, results, out = finished
    systems = results["systems"]
    assert set(systems) == SYSTEMS
    for name, result in systems.items():
        assert set(result) >= {"macro", "train_seconds", "trainable_params", "tasks"}, name
        scores = [result["tasks"][task][metric] for task, metric in result["main_metrics"].items()]
        assert result["macro"] == pytest.approx(sum(scores) / len(scores), abs=0.01), name
    assert set(systems["encoder"]["tasks"]) == {"sst2", "stsb"}  # an encoder does not summarise
    assert set(systems["lead"]["tasks"]) == {"dialogsum"}
    assert systems["lead"]["trainable_params"] == 0
    assert systems["mta"]["tasks"]["dialogsum"].keys() >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    mta = json.loads((out / "seed0" / "mta" / "result.json").read_text())
    stage1 = json.loads((out / "seed0" / "mta_stage1" / "result.json").read_text())
    assert stage1["train_seconds"] == mta["stages"]["stage1"]["wall_seconds"]
    assert stage1["trainable_params"] == mta["stages"]["stage1"]["trainable_params"]
    for name in ("results.json", "results.md", "loss_convergence.png", "gates_mta.png"):
        assert (out / name).exists(), name
    assert "| single_lora |" in (out / "results.md").read_text()


def test_single_task_models_see_their_share_of_the_mixture(finished):
    config, _, out = finished
    single = json.loads((out / "seed0" / "single_lora" / "result.json").read_text())
    steps = {task: part["stages"]["joint"]["steps"] for task, part in single["per_task"].items()}
    # 16, 16 and 8 training examples, proportional mixture, 6 steps of the multi-task run.
    assert steps == {"sst2": 2, "stsb": 2, "dialogsum": 1}
    assert single["trainable_params"] == 3 * json.loads(
        (out / "seed0" / "multi_lora" / "result.json").read_text())["trainable_params"]


def test_a_finished_system_is_not_run_again(finished, monkeypatch):
    config, results, _ = finished

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished system was trained again")

    monkeypatch.setattr("alter.experiment.runner.run_training", must_not_train)
    assert run_experiment(config)["systems"] == results["systems"]


def test_a_system_after_the_stage_of_an_unknown_system_is_a_config_error(tmp_path):
    text = TINY.read_text().replace("{kind: after_stage, of: mta, stage: stage1}",
                                    "{kind: after_stage, of: mtaa, stage: stage1}")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match="systems.mta_stage1.of: 'mtaa' is not a trained system"):
        load_experiment(tmp_path / "bad.yaml")


def test_the_command_line_names_a_bad_key_and_an_unknown_system(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", str(TINY), "--set", "systems.mta.kidn=train"])
    assert result.exit_code == 2
    assert "systems.mta.kidn: unknown key" in result.output
    result = runner.invoke(app, ["experiment", str(TINY), "--set", f"output_dir={tmp_path}", "--only", "mtaa"])
    assert result.exit_code == 2
    assert "--only: no system mtaa" in result.output


def test_a_single_task_system_keeps_the_tasks_it_finished(finished, monkeypatch):
    """Interrupted between two of its tasks, a per-task system trains only what is left."""
    config, results, out = finished
    (out / "seed0" / "single_lora" / "result.json").unlink()

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished task was trained again")

    monkeypatch.setattr("alter.experiment.runner.run_training", must_not_train)
    assert run_experiment(config)["systems"]["single_lora"] == results["systems"]["single_lora"]
