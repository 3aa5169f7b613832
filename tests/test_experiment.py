"""`alter experiment` on tiny random backbones: every system end to end, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import alter
from alter.cli import app
from alter.config import ConfigError
from alter.experiment.config import load_experiment
from alter.experiment.results import write_results
from alter.experiment.runner import copy_shared_stages, run_experiment
from alter.mta.gate import TaskGate

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
    result = runner.invoke(app, ["experiment", str(TINY), "--set", f"output_dir={tmp_path}", "--seeds", "7"])
    assert result.exit_code == 2
    assert "--seeds: [7] not among the experiment's seeds" in result.output
    result = runner.invoke(app, ["experiment", str(TINY), "--set", f"output_dir={tmp_path}", "--seeds", "0,x"])
    assert result.exit_code == 2
    assert "--seeds: '0,x' is not a comma-separated list of integers" in result.output


def test_a_single_task_system_keeps_the_tasks_it_finished(finished, monkeypatch):
    """Interrupted between two of its tasks, a per-task system trains only what is left."""
    config, results, out = finished
    (out / "seed0" / "single_lora" / "result.json").unlink()

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished task was trained again")

    monkeypatch.setattr("alter.experiment.runner.run_training", must_not_train)
    assert run_experiment(config)["systems"]["single_lora"] == results["systems"]["single_lora"]


SEEDED = """
output_dir: {out}
seeds: [0, 1]
base:
  model: {{backbone: tiny-llama, max_source_length: 64, max_target_length: 16, mta: {{kind: bottleneck, rank: 4}}}}
  data:
    validation: 4
    held_out: 4
    tasks:
      - {{name: rte, max_train: 16, max_eval: 8}}
      - {{name: qnli, train_split: dev, scored: false, max_train: 16}}
      - {{name: stsb, max_train: 16, max_eval: 8}}
  stages:
    - {{kind: stage1, steps: 4, batch_size: 4, lr: 1.0e-3}}
    - {{kind: stage2, steps: 2, batch_size: 4, lr: 1.0e-2}}
  eval: {{batch_size: 8, before_training: false}}
systems:
  mta: {{}}
  mta_stage1: {{kind: after_stage, of: mta, stage: stage1}}
  softmax_gates:
    seeds: [0]
    starts_from: {{system: mta, stage: stage1}}
    set:
      stages:
        - {{kind: stage1, steps: 4, batch_size: 4, lr: 1.0e-3}}
        - {{kind: stage2, steps: 3, batch_size: 4, lr: 5.0e-2, collaboration: softmax}}
  held_out_gates:
    seeds: [0]
    starts_from: {{system: mta, stage: stage1}}
    set:
      stages:
        - {{kind: stage1, steps: 4, batch_size: 4, lr: 1.0e-3}}
        - {{kind: stage2, steps: 2, batch_size: 4, lr: 1.0e-2, train_on: held_out}}
  input_gates:  # stage-1 gates are fixed: an input router may join after them
    seeds: [0]
    starts_from: {{system: mta, stage: stage1}}
    set: {{model: {{mta: {{gate: task+input}}}}}}
  calibrated:  # mta's trained model with decision offsets: nothing trained again
    seeds: [0]
    starts_from: {{system: mta, stage: stage2}}
    set: {{eval: {{calibrate: true}}}}
  single_lora:
    per_task: true
    seeds: [0]
    set:
      model: {{mta: {{enabled: false}}, lora: {{r: 4, targets: [q_proj, v_proj]}}}}
      stages: [{{kind: joint, steps: 6, batch_size: 4, lr: 1.0e-3}}]
  peer:  # a peer library's run, written by its own program
    kind: external
    seeds: [0]
    written_by: bench/peers/some-peer.py
"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeded")
    (out / "experiment.yaml").write_text(SEEDED.format(out=out))
    config = load_experiment(out / "experiment.yaml")
    return config, run_experiment(config), out


def test_results_carry_seeds_paired_intervals_and_trivial_scores(seeded):
    config, results, out = seeded
    systems = results["systems"]
    assert systems["mta"]["seeds"] == [0, 1] and systems["single_lora"]["seeds"] == [0]
    assert {"macro", "macro_std", "seeds"} <= set(systems["mta"])
    for name in ("mta_stage1", "softmax_gates", "single_lora"):
        paired = systems[name]["paired_vs_mta"]
        assert paired["tasks"] == ["rte", "stsb"], name  # the auxiliary qnli is never scored
        low, high = paired["ci95"]
        assert low <= paired["macro_diff"] <= high, name
    assert systems["single_lora"]["paired_vs_mta"]["seeds"] == [0]  # mta on seed 0 only, as single_lora
    assert "seeds" not in systems["mta_stage1"]["paired_vs_mta"]  # the same seeds: all of them
    assert systems["mta_stage1"]["paired_vs_mta"]["seeds_resampled"]
    over_seeds = systems["mta_stage1"]["seeds_vs_mta"]  # a t-interval over the per-seed differences
    assert over_seeds["seeds"] == [0, 1] and len(over_seeds["per_seed_diff"]) == 2
    low, high = over_seeds["t95"]
    assert low <= sum(over_seeds["per_seed_diff"]) / 2 <= high
    assert "seeds_vs_mta" not in systems["single_lora"]  # one seed shared with mta
    assert results["stage2_gain"]["after"] == "mta_stage1"
    gain = systems["softmax_gates"]["gain_over_start"]  # the variant minus mta after stage 1, seed 0 alone
    assert (gain["after"], gain["seeds"]) == ("mta_stage1", [0])
    assert "gain_over_start" not in systems["single_lora"]
    assert "softmax_gates minus mta_stage1" in (out / "results.md").read_text()
    calibrated = systems["calibrated"]["gain_over_start"]  # from mta's last stage: mta itself scored alone
    assert (calibrated["after"], calibrated["seeds"]) == ("mta", [0])
    assert "calibrated minus mta" in (out / "results.md").read_text()
    mta_log = (out / "seed0" / "mta" / "log.jsonl").read_text()
    trained = [line for line in (out / "seed0" / "calibrated" / "log.jsonl").read_text().splitlines()
               if '"task_loss"' in line]
    assert trained and all(line in mta_log for line in trained)  # every training line copied from mta's run
    assert results["trivial"]["rte"]["rule"].startswith("majority label")
    assert "validation_macro" in systems["mta"]
    assert "mta − system [95% CI]" in (out / "results.md").read_text()
    single = json.loads((out / "seed0" / "single_lora" / "result.json").read_text())
    assert set(single["per_task"]) == {"rte", "stsb"}


def test_every_named_reference_gets_intervals_of_every_other_system(seeded):
    config, _, out = seeded
    results = write_results(config.model_copy(update={"references": ["mta", "mta_stage1"]}), out)
    systems = results["systems"]
    assert results["reference"] == "mta" and results["references"] == ["mta", "mta_stage1"]
    assert systems["mta"]["paired_vs_mta_stage1"]["macro_diff"] == -systems["mta_stage1"]["paired_vs_mta"]["macro_diff"]
    assert systems["mta"]["seeds_vs_mta_stage1"]["per_seed_diff"] == [
        -diff for diff in systems["mta_stage1"]["seeds_vs_mta"]["per_seed_diff"]]
    assert "paired_vs_mta_stage1" in systems["single_lora"] and "paired_vs_mta_stage1" not in systems["mta_stage1"]
    assert results["stage2_gain"]["after"] == "mta_stage1"  # of the first reference
    write_results(config, out)  # as the other tests read it


def test_a_variant_starts_from_the_shared_stage_without_training_it_again(seeded):
    _, _, out = seeded
    variant, source = out / "seed0" / "softmax_gates", out / "seed0" / "mta"
    for name in ("state.safetensors", "state.json"):
        assert (variant / "stages" / "stage1" / "last" / name).read_bytes() == \
            (source / "stages" / "stage1" / "last" / name).read_bytes()
    stage1_lines = [line for line in (source / "log.jsonl").read_text().splitlines() if '"stage1"' in line]
    assert (variant / "log.jsonl").read_text().splitlines()[: len(stage1_lines)] == stage1_lines
    report = json.loads((variant / "report.json").read_text())
    assert report["stages"]["stage2"]["steps"] == 3
    # Its cost is its own stage 2 alone: stage 1 is mta's.
    result = json.loads((variant / "result.json").read_text())
    assert result["shared_stages"] == ["stage1"]
    assert result["train_seconds"] == pytest.approx(report["stages"]["stage2"]["wall_seconds"], abs=0.01)
    assert not (out / "seed1" / "softmax_gates").exists()  # seed 0 only


def test_input_gates_start_from_the_stage1_of_task_gates_and_train_their_router(seeded):
    _, _, out = seeded
    assert json.loads((out / "seed0" / "input_gates" / "result.json").read_text())["shared_stages"] == ["stage1"]
    trained = alter.load(out / "seed0" / "input_gates" / "model", quantize="none")
    routers = [module.router for module in trained.modules() if isinstance(module, TaskGate)]
    assert trained.config.mta.gate == "task+input" and routers
    assert any(router.weight.abs().sum() > 0 for router in routers)  # zero at the start, trained by stage 2


def test_gates_trained_on_held_out_examples_see_no_auxiliary_task(seeded):
    _, _, out = seeded
    records = [json.loads(line) for line in (out / "seed0" / "held_out_gates" / "log.jsonl").read_text().splitlines()]
    stage2 = [record for record in records if record["stage"] == "stage2" and "task_loss" in record]
    assert stage2 and all("qnli" not in record["task_loss"] for record in stage2)


def test_a_variant_whose_shared_stage_differs_is_refused(seeded, tmp_path):
    _, _, out = seeded
    text = (out / "experiment.yaml").read_text().replace(
        "        - {kind: stage1, steps: 4, batch_size: 4, lr: 1.0e-3}\n        - {kind: stage2, steps: 3",
        "        - {kind: stage1, steps: 4, batch_size: 4, lr: 2.0e-3}\n        - {kind: stage2, steps: 3")
    text = text.replace(f"output_dir: {out}", f"output_dir: {tmp_path}")
    (tmp_path / "bad.yaml").write_text(text)
    bad = load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "seed0" / "mta" / "stages").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"stages.0.lr: 0.001 -> 0.002"):
        copy_shared_stages(bad, "softmax_gates", 0, tmp_path / "seed0" / "softmax_gates")


def test_a_finished_system_whose_config_changed_is_refused_not_mixed(seeded, tmp_path):
    _, _, out = seeded
    stage2 = "    - {kind: stage2, steps: 2, batch_size: 4, lr: 1.0e-2}"
    changed = (out / "experiment.yaml").read_text().replace(stage2, stage2.replace("1.0e-2", "3.0e-2"))
    (tmp_path / "changed.yaml").write_text(changed)
    with pytest.raises(ConfigError, match=r"seed 0, system mta: .*stages.1.lr: 0.01 -> 0.03"):
        run_experiment(load_experiment(tmp_path / "changed.yaml"))


def test_an_external_system_is_read_once_its_program_wrote_it(seeded, caplog):
    config, results, out = seeded
    assert "peer" not in results["systems"]  # not written yet: skipped with a warning, nothing fails
    peer = out / "seed0" / "peer"
    peer.mkdir(exist_ok=True)
    # The peer's files in alter's formats: here, a copy of mta's own on seed 0.
    mta = json.loads((out / "seed0" / "mta" / "result.json").read_text())
    (peer / "predictions_final.json").write_text((out / "seed0" / "mta" / "predictions_final.json").read_text())
    (peer / "result.json").write_text(json.dumps({key: mta[key] for key in (
        "tasks", "macro", "train_seconds", "trainable_params", "predictions", "eval_examples")}))
    paired = run_experiment(config, only=["peer"])["systems"]["peer"]["paired_vs_mta"]
    assert paired["macro_diff"] == 0.0 and paired["seeds"] == [0]
    with pytest.raises(ConfigError, match="written_by"):
        (out / "bad.yaml").write_text(SEEDED.format(out=out).replace("    written_by: bench/peers/some-peer.py\n", ""))
        load_experiment(out / "bad.yaml")
