"""`alter add-task`: a saved model takes a new task from a config; the old tasks answer as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import alter
from alter.cli import app
from alter.training.run import run_training
from tests.conftest import tiny

runner = CliRunner()

ADDED = {"data": {"tasks": ["stsb"], "max_train": 16, "max_eval": 4},
         "stages": [{"kind": "stage1", "steps": 3, "batch_size": 4, "lr": 3.0e-3},
                    {"kind": "stage2", "steps": 2, "batch_size": 4, "lr": 1.0e-2}],
         "eval": {"batch_size": 8, "max_new_tokens": 8}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """configs/tiny.yaml trained (sst2 and dialogsum, both stages: residual gates)."""
    config = tiny(tmp_path_factory.mktemp("runs"), "base")
    run_training(config)
    return config.output_dir + "/model"


def _write(path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def _answers(model_dir, tasks=("sst2", "dialogsum")):
    from alter.data.task import data_root

    model = alter.load(model_dir)
    examples = [example for task in model.tasks if task.name in tasks for example in task.read("dev", data_root())[:3]]
    return model.predict(examples, max_new_tokens=6)


def test_a_task_added_from_the_command_line_leaves_the_others_as_they_were(trained, tmp_path):
    result = runner.invoke(app, ["add-task", trained, _write(tmp_path / "add.yaml", ADDED),
                                 "--output", str(tmp_path / "grown")])
    assert result.exit_code == 0, result.output
    grown = alter.load(tmp_path / "grown" / "model")
    assert [task.name for task in grown.tasks] == ["sst2", "dialogsum", "stsb"]
    assert _answers(tmp_path / "grown" / "model") == _answers(trained)
    assert "stsb" in (tmp_path / "grown" / "model" / "README.md").read_text()  # the model card lists it
    # Stage 1 trained one expert (the new one) where the base run trained two.
    stage1 = json.loads((tmp_path / "grown" / "report.json").read_text())["stages"]["stage1"]["trainable_params"]
    base = json.loads((Path(trained).parent / "report.json").read_text())["stages"]["stage1"]["trainable_params"]
    assert 2 * stage1 == base


@pytest.mark.parametrize("change, message", [
    ({"data": {"tasks": ["sst2"]}}, "already has a task 'sst2'"),
    ({"model": {"mta": {"rank": 4}}}, "model.mta.rank: 4 here, 8 in the checkpoint"),
    ({"model": {"backbone": "tiny-gpt2"}}, "model.backbone: 'tiny-gpt2' here, 'tiny-llama' in the checkpoint"),
    ({"stages": [{"kind": "stage1", "steps": 2, "train_backbone": True}]}, "train_backbone would change every task"),
    ({"stages": [ADDED["stages"][0], {**ADDED["stages"][1], "collaboration": "softmax"}]},
     "stage stage2: collaboration=softmax, but the model's gates are residual"),
])
def test_what_cannot_be_added_is_one_clear_line(trained, tmp_path, change, message):
    settings = {**ADDED, **change}
    result = runner.invoke(app, ["add-task", trained, _write(tmp_path / "add.yaml", settings),
                                 "--output", str(tmp_path / "grown")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "grown").exists()  # refused before any stage trained


def test_a_stage2_that_names_no_collaboration_takes_the_model_s_kind_of_gates(tmp_path):
    base = tiny(tmp_path, "softmax", "stages.1.collaboration=softmax")
    run_training(base)
    result = runner.invoke(app, ["add-task", base.output_dir + "/model", _write(tmp_path / "add.yaml", ADDED),
                                 "--output", str(tmp_path / "grown")])
    assert result.exit_code == 0, result.output  # ADDED's stage 2 names none: softmax, as the model's gates
    assert _answers(tmp_path / "grown" / "model") == _answers(base.output_dir + "/model")


@pytest.fixture(scope="module")
def stage1_only(tmp_path_factory):
    """configs/tiny.yaml's stage 1 alone: every task's gate is its own expert."""
    config = tiny(tmp_path_factory.mktemp("runs"), "stage1")
    run_training(config.model_copy(update={"stages": config.stages[:1]}))
    return config.output_dir + "/model"


def test_an_added_task_starts_from_the_configs_seed_whatever_ran_before(trained, tmp_path):
    import torch
    from safetensors.torch import load_file

    from alter.config import load_config
    from alter.training.add_task import add_tasks

    config = load_config(_write(tmp_path / "add.yaml", ADDED))
    weights = []
    for run, draws in (("first", 0), ("second", 7)):
        torch.rand(draws)  # a caller's own use of the global generator
        add_tasks(trained, config.model_copy(update={"output_dir": str(tmp_path / run)}))
        weights.append(load_file(str(tmp_path / run / "model" / "trained.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_replace_retrains_one_task_and_leaves_the_other(stage1_only, tmp_path):
    settings = {**ADDED, "data": {"tasks": ["sst2"], "max_train": 16, "max_eval": 4},
                "stages": [ADDED["stages"][0]]}
    result = runner.invoke(app, ["add-task", stage1_only, _write(tmp_path / "again.yaml", settings),
                                 "--replace", "sst2", "--output", str(tmp_path / "replaced")])
    assert result.exit_code == 0, result.output
    replaced = tmp_path / "replaced" / "model"
    assert [task.name for task in alter.load(replaced).tasks] == ["dialogsum", "sst2"]
    assert _answers(replaced, ["dialogsum"]) == _answers(stage1_only, ["dialogsum"])


def test_remove_task_saves_the_model_without_it(stage1_only, tmp_path):
    result = runner.invoke(app, ["remove-task", stage1_only, "dialogsum", "--output", str(tmp_path / "less")])
    assert result.exit_code == 0, result.output
    assert [task.name for task in alter.load(tmp_path / "less").tasks] == ["sst2"]
    assert _answers(tmp_path / "less", ["sst2"]) == _answers(stage1_only, ["sst2"])


def test_a_task_whose_expert_the_others_draw_on_is_not_removed(trained, tmp_path):
    """tiny.yaml's stage 2 teaches each gate to draw on the other task's expert."""
    result = runner.invoke(app, ["remove-task", trained, "dialogsum", "--output", str(tmp_path / "less")])
    assert result.exit_code == 2, result.output
    assert "the gates of sst2 draw on the expert of 'dialogsum'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "less").exists()
