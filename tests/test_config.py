"""Config files: strict keys, types named in errors, overrides from the command line."""

from __future__ import annotations

import pytest

from alter.config import ConfigError, load_config
from alter.experiment.config import load_experiment
from tests.conftest import ROOT


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_shipped_configs_load():
    for name in ("configs/tiny.yaml", "configs/quickstart.yaml", "bench/ddp.yaml"):
        config = load_config(name)
        assert config.stages[0].kind == "stage1"


EXPERIMENTS = sorted(path.name for path in (ROOT / "configs").glob("*.yaml") if "systems:" in path.read_text())


def test_the_shipped_experiments_are_found():
    assert {"convergence.yaml", "paper.yaml", "transfer.yaml", "experiment-tiny.yaml"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_system_of_the_shipped_experiments_is_a_valid_train_config(name, tmp_path):
    experiment = load_experiment(ROOT / "configs" / name)
    trained = [system for system, settings in experiment.systems.items() if settings.kind == "train"]
    assert trained, f"{name} trains no system"
    for system in trained:
        config = experiment.train_config(system, experiment.seeds[0], tmp_path / system)
        assert config.stages and config.data.tasks, f"{name}: {system} has no stages or tasks"


def test_routed_share_steps_need_mixed_batches(tmp_path):
    path = write(tmp_path, "data: {tasks: [sst2]}\n"
                           "stages: [{kind: stage1, batches: one_task, expert_lr: routed_share}]\n")
    with pytest.raises(ConfigError, match="with batches: one_task each expert steps on whole batches"):
        load_config(path)


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "data: {tasks: [sst2]}\nmodel: {mta: {rnak: 4}}\n")
    with pytest.raises(ConfigError, match=r"model.mta.rnak: unknown key"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "data: {tasks: [sst2]}\nstages: [{kind: stage1, steps: many}]\n")
    with pytest.raises(ConfigError, match=r"stages.0.steps: .*integer"):
        load_config(path)


def test_overrides(tmp_path):
    path = write(tmp_path, "data: {tasks: [sst2]}\nstages: [{kind: stage1, steps: 5}]\n")
    config = load_config(path, ["stages.0.steps=7", "model.mta.rank=4", "data.max_train=10", "output_dir=/tmp/x"])
    assert (config.stages[0].steps, config.model.mta.rank, config.data.max_train) == (7, 4, 10)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["stages.0.steps"])
    with pytest.raises(ConfigError, match=r"^--set model.mta.rank: model.mta.rank: .*integer"):
        load_config(path, ["model.mta.rank=big"])  # the --set is to blame, not the file
    with pytest.raises(ConfigError, match=r"^--set model.mta: model.mta.rnak: unknown key"):
        load_config(path, ["model.mta={rnak: 4}"])
    with pytest.raises(ConfigError, match=r"^.*config.yaml: stages.0.steps"):
        load_config(write(tmp_path, "data: {tasks: [sst2]}\nstages: [{kind: stage1, steps: x}]\n"),
                    ["model.mta.rank=4"])


def test_top_k_gates_need_softmax_collaboration(tmp_path):
    path = write(tmp_path, "data: {tasks: [sst2]}\nmodel: {mta: {top_k: 1, num_experts: 2}}\n"
                           "stages: [{kind: stage1}, {kind: stage2}]\n")
    with pytest.raises(ConfigError, match=r"stages.1.collaboration"):
        load_config(path)
    assert load_config(path, ["stages.1.collaboration=softmax"]).stages[1].collaboration == "softmax"
