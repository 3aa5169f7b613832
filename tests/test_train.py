"""End to end on the tiny config: train, report, resume, command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from alter.cli import app
from alter.config import StageConfig, load_config
from alter.models.mta_model import MTAModel
from alter.training import loop
from alter.training.resume import resume_conflict
from alter.training.run import run_training
from tests.conftest import interrupt_at, model_config, saved_weights, stage_rows, tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = tiny(out, "full")
    return config, run_training(config)


def test_tiny_run_writes_report_plots_and_model(finished):
    config, report = finished
    out = config.output_dir
    assert set(report["metrics"]) == {"sst2", "dialogsum"}
    assert set(report["metrics"]["dialogsum"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert set(report["before_training"]) == {"sst2", "dialogsum"}
    assert report["stages"]["stage2"]["trainable_params"] < report["stages"]["stage1"]["trainable_params"]
    for name in ("report.json", "report.md", "loss_curves.png", "gates.png", "log.jsonl", "model/alter.json"):
        assert Path(out, name).exists(), name
    records = [json.loads(line) for line in open(f"{out}/log.jsonl")]
    assert {"sst2", "dialogsum"} == {name for r in records if "task_loss" in r for name in r["task_loss"]}


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_resumes_to_the_samesaved_weights(tmp_path, monkeypatch, caplog, finished, error):
    """Ctrl-C saves at once; a crash (like a killed process) resumes from the last periodic save."""
    config = tiny(tmp_path, "resumed")
    with monkeypatch.context() as patch:
        interrupt_at(patch, 6, error)
        with pytest.raises(error):
            run_training(config)
    saved_step = json.loads((tmp_path / "resumed/stages/stage1/last/state.json").read_text())["step"]
    assert saved_step == (6 if error is KeyboardInterrupt else 4)
    with caplog.at_level(logging.INFO, logger="alter.training.loop"):
        run_training(config)
    assert f"stage1: resumed from step {saved_step} of 12" in caplog.text
    full, resumed = saved_weights(Path(finished[0].output_dir)), saved_weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_tied_stage2_gates_resume_to_the_samesaved_weights(tmp_path, monkeypatch):
    tied = ("stages.1.gate_layers=tied", "stages.1.save_every=2", "eval.before_training=false")
    whole = run_training(tiny(tmp_path, "whole", *tied))
    config = tiny(tmp_path, "resumed", *tied)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2, KeyboardInterrupt, stage="stage2")
        with pytest.raises(KeyboardInterrupt):
            run_training(config)
    resumed = run_training(config)
    assert resumed["metrics"] == whole["metrics"]
    full, again = saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "resumed")
    gates = sorted(name for name in full if name.endswith("task_logits"))
    assert len(gates) > 1 and all(torch.equal(full[gates[0]], full[name]) for name in gates)
    assert not torch.equal(full[gates[0]], torch.zeros_like(full[gates[0]]))
    for name in full:
        assert torch.equal(full[name], again[name]), name


def test_cli_eval_and_predict(finished, tmp_path):
    config, _ = finished
    model_dir = f"{config.output_dir}/model"
    result = runner.invoke(app, ["eval", model_dir, "--max-eval", "4", "--output", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "m.json").read_text())["metrics"]) == {"sst2", "dialogsum"}
    result = runner.invoke(app, ["eval", model_dir, "--max-eval", "4", "--prune-to", "1"])  # gates pruned first
    assert result.exit_code == 0, result.output
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"sentence": "a fine film"}\n{"sentence": "dull"}\n')
    result = runner.invoke(app, ["predict", model_dir, "--task", "sst2", "--input", str(requests),
                                 "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["prediction"] in ("positive", "negative") for line in lines] == [True, True]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Hi.\\n#Person2#: Hello."}}\n'
                     '{"task": "sst2", "inputs": {"sentence": "a fine film"}}\n')
    result = runner.invoke(app, ["predict", model_dir, "--input", str(mixed), "--output", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [line["task"] for line in lines] == ["dialogsum", "sst2"]
    assert isinstance(lines[0]["prediction"], str) and lines[1]["prediction"] in ("positive", "negative")


@pytest.mark.parametrize("args,message", [
    (["train", "nope.yaml"], "config file not found: nope.yaml"),
    (["train", "configs/tiny.yaml", "--set", "data.tasks=[sst3]"], "unknown task 'sst3'"),
    (["train", "configs/tiny.yaml", "--set", "model.backbone=no-such-model!"], "unknown backbone 'no-such-model!'"),
    (["train", "configs/tiny.yaml", "--set", "model.mta.rnak=3"], "model.mta.rnak: unknown key"),
    (["train", "configs/tiny.yaml", "--set", "stages.0.lr=fast"], "stages.0.lr"),
    (["train", "configs/tiny.yaml", "--set", "data.root=/nonexistent"], "file not found: /nonexistent/"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = runner.invoke(app, [*args, "--set", f"output_dir={tmp_path}"] if args[1] != "nope.yaml" else args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_changed_config_does_not_resume_another_run(finished):
    out = finished[0].output_dir
    result = runner.invoke(app, ["train", "configs/tiny.yaml", "--set", f"output_dir={out}",
                                 "--set", "model.mta.rank=4", "--set", "stages.0.steps=6"])
    assert result.exit_code == 2, result.output
    assert f"{out} holds a run of another config" in result.output
    assert "model.mta.rank: 8 -> 4" in result.output and "stages.0.steps: 12 -> 6" in result.output
    assert "Traceback" not in result.output
    assert load_config(Path(out) / "config.yaml").model.mta.rank == 8  # the folder's record is kept


def test_evaluation_settings_and_added_stages_may_change_on_resume(finished):
    config = finished[0]
    same_run = config.model_copy(update={"eval": config.eval.model_copy(update={"batch_size": 2}),
                                         "stages": [*config.stages, config.stages[-1].model_copy(
                                             update={"name": "stage2b"})]})
    assert resume_conflict(Path(config.output_dir), same_run) is None
    fewer = config.model_copy(update={"stages": config.stages[:1]})
    assert "stages: 2 -> 1" in resume_conflict(Path(config.output_dir), fewer)


def test_the_settings_of_a_disabled_mta_module_do_not_stop_a_resume(tmp_path):
    """A baseline without MTA stays valid when the base config's MTA design changes."""
    baseline = tiny(tmp_path, "baseline", "model.mta.enabled=false")
    out = Path(baseline.output_dir)
    (out / "stages").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(baseline.model_dump(mode="json")))
    redesigned = tiny(tmp_path, "baseline", "model.mta.enabled=false", "model.mta.kind=lora", "model.mta.rank=4")
    assert resume_conflict(out, redesigned) is None
    assert "model.mta.enabled: False -> True" in resume_conflict(out, tiny(tmp_path, "baseline"))


def _predict(finished, tmp_path, lines: str, task: str):
    """`alter predict --task TASK` of the finished tiny model on a JSONL file of `lines`."""
    requests = tmp_path / "in.jsonl"
    requests.write_text(lines)
    return runner.invoke(app, ["predict", f"{finished[0].output_dir}/model", "--task", task, "--input", str(requests)])


def test_predict_names_the_line_of_a_bad_request(finished, tmp_path):
    result = _predict(finished, tmp_path, '{"sentence": "fine"}\n{"text": "wrong field"}\n', "sst2")
    assert result.exit_code == 2
    assert "in.jsonl:2: task sst2 needs input field(s) sentence" in result.output


def test_the_report_counts_the_inputs_cut_to_max_source_length(finished):
    """Dialogues are longer than tiny.yaml's 96 tokens (of the tiny backbone's tokenizer)."""
    config, report = finished
    cut = report["inputs_cut"]
    assert "dialogsum" in cut and report["max_source_length"] == 96
    shortened, total = cut["dialogsum"]["train"]
    assert 0 < shortened <= total == 32
    assert 0 < cut["dialogsum"]["eval"][0] <= cut["dialogsum"]["eval"][1] == 8
    assert f"dialogsum: {shortened} of 32 training inputs" in Path(config.output_dir, "report.md").read_text()


def test_predict_blames_the_task_flag_not_the_file(finished, tmp_path):
    result = _predict(finished, tmp_path, '{"sentence": "fine"}\n', "nope")
    assert result.exit_code == 2
    assert "--task" in result.output and "no task 'nope'" in result.output
    assert "in.jsonl:1" not in result.output


def test_tasks_command_lists_split_sizes():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    assert "872" in result.output and "dialogsum" in result.output


def test_a_users_own_task_trains_from_yaml_alone(tmp_path):
    rows = "body,team\n" + "".join(f"card charged twice {i},billing\napp crashes {i},tech\n" for i in range(8))
    (tmp_path / "tickets.csv").write_text(rows)
    config = tmp_path / "tickets.yaml"
    config.write_text(f"""
output_dir: {tmp_path / "run"}
model: {{backbone: tiny-gpt2, max_source_length: 48}}
data:
  tasks: [tickets]
  custom_tasks:
    - name: tickets
      kind: classification
      inputs: {{text: body}}
      target: team
      labels: [billing, tech]
      template: "Ticket: {{text}}\\nTeam:"
      splits:
        train: {{path: {tmp_path / "tickets.csv"}}}
        dev: {{path: {tmp_path / "tickets.csv"}}}
stages: [{{kind: stage1, steps: 3, batch_size: 4}}, {{kind: stage2, steps: 2, batch_size: 4}}]
""")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["metrics"]) == {"tickets"}
    result = runner.invoke(app, ["eval", str(tmp_path / "run" / "model"), "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output


def test_a_killed_process_resumes_to_the_samesaved_weights(tmp_path):
    """SIGKILL leaves no chance to save: the run resumes from its last periodic checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = ["stages.0.steps=48", "stages.0.save_every=4", "eval.before_training=false"]
    command = [sys.executable, "-m", "alter.cli", "train", "configs/tiny.yaml", "--set",
               f"output_dir={tmp_path / 'killed'}", *[arg for o in overrides for arg in ("--set", o)]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "stages" / "stage1" / "last" / "state.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "report.json").exists(), "the run finished before it could be killed"
    assert subprocess.run(command, capture_output=True).returncode == 0
    reference = run_training(tiny(tmp_path, "whole", *overrides))
    assert reference["stages"]["stage1"]["steps"] == 48
    full, resumed = saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "killed")
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_a_checkpoint_of_other_trainable_parameters_names_the_folder_to_delete(registry, samples, tmp_path):
    """E.g. a stage-2 checkpoint written before the gates had a weight for the shared expert."""
    tasks = [registry.get("sst2"), registry.get("stsb")]
    stage = StageConfig(kind="stage1", steps=2, save_every=1)
    rates = {"sst2": 0.5, "stsb": 0.5}

    old = MTAModel(model_config("tiny-llama", kind="lora", rank=2), tasks)
    log = loop.RunLog(tmp_path / "log")
    loop.train_stage(old, stage, stage_rows(old, samples, rates, per_task=2), tmp_path / "stage1", log, 0)
    new = MTAModel(model_config("tiny-llama", kind="lora", rank=2, targets=["self_attn.q_proj"]), tasks)
    longer = stage.model_copy(update={"steps": 3})
    with pytest.raises(ValueError, match=r"stage1/last: the checkpoint holds an optimizer for other parameters.*"
                                         r"delete .*stage1 to train the stage again"):
        loop.train_stage(new, longer, stage_rows(new, samples, rates, per_task=2), tmp_path / "stage1", log, 0)


def test_tensorboard_events_carry_losses_metrics_and_gates(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny(tmp_path, "tb", "logging.tensorboard=true", "eval.before_training=false")
    run_training(config)
    events = EventAccumulator(str(Path(config.output_dir) / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/loss/sst2", "train/loss/dialogsum"} <= tags
    assert {"eval_final/sst2/accuracy", "eval_final/dialogsum/rougeL", "gates/sst2/expert_0"} <= tags
    stage_steps = [stage.steps for stage in config.stages]
    loss_steps = [event.step for event in events.Scalars("train/loss")]
    assert max(loss_steps) == sum(stage_steps)  # one axis across the stages
    assert events.Scalars("eval_final/sst2/accuracy")[0].step == sum(stage_steps)


def test_alter_tasks_notes_skipped_rows_under_the_table_instead_of_warning(caplog):
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    assert "qqp" in result.output and "note:" in result.output and "malformed" in result.output
    assert not [record for record in caplog.records if record.name == "alter.data.readers"]
