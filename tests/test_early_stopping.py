"""Early stopping (`stages[].early_stopping`): the stage ends at its plateau with its best
weights; per task, each task stops on its own and keeps its own best weights."""

from __future__ import annotations

import json

import pytest
import torch

from alter.config import ConfigError, EarlyStoppingConfig, SharedLoraConfig, StageConfig, parse_config
from alter.models.mta_model import MTAModel
from alter.training.early_stopping import EarlyStopper, stage_finished
from alter.training.loop import train_stage
from alter.training.run import run_training
from alter.training.run_log import RunLog
from tests.conftest import model_config, stage_rows, tiny

RATES = {"sst2": 0.5, "rte": 0.5}


class Scripted:
    """An `evaluate` that returns the next scores of a script ({task: [score per evaluation]})
    and records the weights the model had at each evaluation."""

    def __init__(self, model, script: dict[str, list[float]], done: int = 0):
        self.model, self.script, self.calls, self.weights = model, script, done, []

    def __call__(self) -> dict[str, float]:
        self.weights.append({name: p.detach().clone() for name, p in self.model.named_parameters()
                             if p.requires_grad})
        scores = {task: values[min(self.calls, len(values) - 1)] for task, values in self.script.items()}
        self.calls += 1
        return scores


def _model(registry, head="classifier", **mta):
    """One LoRA expert per task and no shared one (per-task stopping needs weights no two tasks share)."""
    torch.manual_seed(0)
    return MTAModel(model_config("tiny-bert", head=head, kind="lora", rank=2, **{"shared_expert": False, **mta}),
                    [registry.get(name) for name in RATES])


def _stage(per_task: bool, patience: int = 2, steps: int = 40) -> StageConfig:
    return StageConfig("stage1", steps=steps, lr=5e-2, warmup_ratio=0.0, eval_every=2, save_every=4,
                       early_stopping=EarlyStoppingConfig(patience=patience, per_task=per_task))


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _crash_at_step_11(model, monkeypatch) -> None:
    """Make the model's 11th forward pass raise KeyboardInterrupt, as Ctrl-C in the middle of a step."""
    calls = {"n": 0}
    original = model.forward

    def crash_at_step_11(rows):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return original(rows)

    monkeypatch.setattr(model, "forward", crash_at_step_11)


def test_the_stage_stops_at_its_plateau_and_ends_with_its_best_weights(registry, samples, tmp_path):
    model = _model(registry)
    # Macro at the start 50, then 55, 60 (best, step 4), 57.5, 57: two evaluations without a gain
    # -> stop at step 8.
    evaluate = Scripted(model, {"sst2": [0.4, 0.5, 0.6, 0.55, 0.54], "rte": [0.6, 0.6, 0.6, 0.6, 0.6]})
    result = train_stage(model, _stage(per_task=False), stage_rows(model, samples, RATES), tmp_path / "s1",
                         RunLog(tmp_path / "log.jsonl"), 0, validation_scores=evaluate)
    assert result.steps == 8 and evaluate.calls == 5
    for name, value in evaluate.weights[2].items():  # the weights of the best evaluation (step 4)
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), value, rtol=0, atol=0)
    assert any((evaluate.weights[4][name] != value).any() for name, value in evaluate.weights[2].items())
    last = _log(tmp_path / "log.jsonl")[-1]
    assert last["early_stopped"] and last["best_macro"] == pytest.approx(60.0)
    state = json.loads((tmp_path / "s1" / "last" / "state.json").read_text())
    assert state["step"] == 8 and stage_finished(state, 40)


def test_each_task_stops_on_its_own_and_keeps_its_own_best(registry, samples, tmp_path):
    model = _model(registry)
    # After the evaluation of the start (step 0), sst2 peaks at step 2 and then stalls: it stops at
    # step 6; rte improves until step 10 and stops at step 14, which ends the stage.
    script = {"sst2": [0.0, 0.7, 0.6, 0.6], "rte": [0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.6, 0.6]}
    evaluate = Scripted(model, script)
    log = tmp_path / "log.jsonl"
    result = train_stage(model, _stage(per_task=True), stage_rows(model, samples, RATES), tmp_path / "s1",
                         RunLog(log), 0, validation_scores=evaluate)
    assert result.steps == 14
    stops = [record for record in _log(log) if "stopped_tasks" in record]
    assert [(r["step"], r["stopped_tasks"]) for r in stops] == [(6, ["sst2"]), (14, ["sst2", "rte"])]
    params = dict(model.named_parameters())
    for task, best in (("sst2", 1), ("rte", 5)):
        trained = {name: row for name, row in model.task_parameters(model.task_id(task)).items()
                   if name in evaluate.weights[0]}  # its expert rows and head (its gate row waits for stage 2)
        assert any(row is not None for row in trained.values()) and None in trained.values()
        for name, row in trained.items():
            now, then = params[name].detach(), evaluate.weights[best][name]
            torch.testing.assert_close(now if row is None else now[row], then if row is None else then[row],
                                       rtol=0, atol=0)
    # After sst2 stopped (step 6), its rows left the mixture: its head took no more steps.
    head = "head.heads.sst2.weight"
    assert not torch.equal(evaluate.weights[1][head], evaluate.weights[3][head])  # it trained before
    torch.testing.assert_close(evaluate.weights[3][head], evaluate.weights[7][head], rtol=0, atol=0)
    restored = {name: p.detach().clone() for name, p in model.named_parameters()}

    again = _model(registry)  # the same command again: the stage is over, the best weights come back
    train_stage(again, _stage(per_task=True), stage_rows(again, samples, RATES), tmp_path / "s1",
                RunLog(tmp_path / "again.jsonl"), 0, validation_scores=Scripted(again, script))
    for name, value in again.named_parameters():
        torch.testing.assert_close(value.detach(), restored[name], rtol=0, atol=0)


# Per task: sst2 stops at step 6, rte at 14. Whole model: the macro rises to 60 at step 10, then
# two checks without a gain end the stage at step 14.
RESUME_SCRIPTS = {True: {"sst2": [0.0, 0.7, 0.6, 0.6], "rte": [0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.6, 0.6]},
                  False: {"sst2": [0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.6, 0.6], "rte": [0.0, 0.5]}}


@pytest.mark.parametrize("per_task", [True, False])
def test_an_interrupted_stage_resumes_to_the_same_weights(registry, samples, tmp_path, monkeypatch, per_task):
    script = RESUME_SCRIPTS[per_task]
    whole = _model(registry)
    done = train_stage(whole, _stage(per_task=per_task), stage_rows(whole, samples, RATES), tmp_path / "whole",
                       RunLog(tmp_path / "whole.jsonl"), 0, validation_scores=Scripted(whole, script))
    assert done.steps == 14

    model = _model(registry)
    evaluate = Scripted(model, script)
    _crash_at_step_11(model, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_stage(model, _stage(per_task=per_task), stage_rows(model, samples, RATES), tmp_path / "crash",
                    RunLog(tmp_path / "crash.jsonl"), 0, validation_scores=evaluate)
    resumed = _model(registry)
    # The evaluations before the crash ran (the start's too; a resumed stage does not score its
    # start again); the script continues from the checkpoint's step (10).
    again = train_stage(resumed, _stage(per_task=per_task), stage_rows(resumed, samples, RATES), tmp_path / "crash",
                        RunLog(tmp_path / "crash.jsonl"), 0, validation_scores=Scripted(resumed, script, done=6))
    assert again.steps == 14  # what the stage had waited and its best so far came back with it
    for name, value in resumed.named_parameters():
        torch.testing.assert_close(value.detach(), dict(whole.named_parameters())[name].detach(), rtol=0, atol=0)


def test_a_task_the_stage_only_makes_worse_ends_as_it_began(registry, samples, tmp_path):
    model = _model(registry)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    script = {"sst2": [0.9, 0.6, 0.6], "rte": [0.0, 0.5, 0.6, 0.6]}  # sst2 is best before any step
    train_stage(model, _stage(per_task=True), stage_rows(model, samples, RATES), tmp_path / "s1",
                RunLog(tmp_path / "log.jsonl"), 0, validation_scores=Scripted(model, script))
    params = dict(model.named_parameters())
    for name, row in model.task_parameters(model.task_id("sst2")).items():
        now, then = params[name].detach(), start[name]
        torch.testing.assert_close(now if row is None else now[row], then if row is None else then[row],
                                   rtol=0, atol=0)
    assert not torch.equal(params["head.heads.rte.weight"], start["head.heads.rte.weight"])


@pytest.mark.parametrize("per_task", [False, True])
def test_gains_below_min_delta_neither_wait_longer_nor_replace_the_start(registry, samples, tmp_path, per_task):
    """Every check gains 1-2 points on the one before (3 in all), below a 5-point margin: the
    stage stops after `patience` checks and ends with the weights it started from."""
    model = _model(registry)
    start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    script = {"sst2": [0.50, 0.52, 0.53, 0.53], "rte": [0.60, 0.60, 0.61, 0.63]}
    stage = StageConfig("stage1", steps=40, lr=5e-2, warmup_ratio=0.0, eval_every=2, save_every=4,
                        early_stopping=EarlyStoppingConfig(patience=2, per_task=per_task, min_delta=5.0,
                                                           until_learned=False))
    evaluate = Scripted(model, script)
    result = train_stage(model, stage, stage_rows(model, samples, RATES), tmp_path / "s1",
                         RunLog(tmp_path / "log.jsonl"), 0, validation_scores=evaluate)
    assert result.steps == 4 and evaluate.calls == 3  # the start and two checks without a 5-point gain
    for name, value in start.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), value, rtol=0, atol=0)


@pytest.mark.parametrize("until_learned,stops_at", [(True, 14), (False, 6)])
def test_a_task_at_its_trivial_score_waits_to_learn(registry, samples, tmp_path, until_learned, stops_at):
    """rte sits at its trivial score (all-positive F1 0.8) for four evaluations, then learns; a
    patience that counted those checks would stop it before it starts."""
    model = _model(registry)
    script = {"sst2": [0.0, 0.7, 0.6, 0.6], "rte": [0.0, 0.8, 0.8, 0.8, 0.8, 0.85, 0.84, 0.84]}
    stage = StageConfig("stage1", steps=40, lr=5e-2, warmup_ratio=0.0, eval_every=2, save_every=4,
                        early_stopping=EarlyStoppingConfig(patience=2, per_task=True, until_learned=until_learned))
    log = tmp_path / "log.jsonl"
    train_stage(model, stage, stage_rows(model, samples, RATES), tmp_path / "s1", RunLog(log), 0,
                validation_scores=Scripted(model, script), floors={"sst2": 0.5, "rte": 0.8})
    rte_stopped = [r["step"] for r in _log(log) if "rte" in r.get("stopped_tasks", [])]
    assert rte_stopped[0] == stops_at


@pytest.mark.parametrize("until_learned,stops_at", [(True, 12), (False, 6)])
def test_the_whole_model_waits_for_every_task_to_pass_its_trivial_score(registry, samples, tmp_path,
                                                                        until_learned, stops_at):
    """The macro peaks at step 2 (75) while rte sits at its trivial F1 0.8 until step 10: checks
    before rte learns count no patience, so the stage stops two checks after it (step 12), not
    two checks after the peak (step 6), and ends with the peak's weights either way."""
    model = _model(registry)
    script = {"sst2": [0.0, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6], "rte": [0.0, 0.8, 0.8, 0.8, 0.8, 0.85, 0.84]}
    stage = StageConfig("stage1", steps=40, lr=5e-2, warmup_ratio=0.0, eval_every=2, save_every=4,
                        early_stopping=EarlyStoppingConfig(patience=2, until_learned=until_learned))
    evaluate = Scripted(model, script)
    result = train_stage(model, stage, stage_rows(model, samples, RATES), tmp_path / "s1",
                         RunLog(tmp_path / "log.jsonl"), 0, validation_scores=evaluate,
                         floors={"sst2": 0.5, "rte": 0.8})
    assert result.steps == stops_at
    for name, value in evaluate.weights[1].items():  # the weights scored at step 2
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), value, rtol=0, atol=0)


@pytest.mark.parametrize("mta,lora,shared", [
    ({"shared_expert": True}, False, r"row\(s\) no single task owns"),
    ({"assignment": {"sst2": 0, "rte": 0}, "num_experts": 1}, False, "serves several tasks"),
    ({"enabled": False}, True, "is trained for every task"),
])
def test_per_task_stopping_refuses_weights_that_tasks_share(registry, mta, lora, shared):
    model = _model(registry, **mta)
    if lora:
        model = MTAModel(model.config.model_copy(update={"lora": SharedLoraConfig(targets=["query", "value"])}),
                         model.tasks)
    from alter.training.stages import prepare_stage

    trainable = prepare_stage(model, StageConfig("stage1"))
    with pytest.raises(ValueError, match=shared):
        EarlyStopper(model, EarlyStoppingConfig(per_task=True), trainable, None)


def test_stage_two_gates_are_each_task_s_own(registry):
    """In stage 2 only the task gates train: one row of each per task, so each task may stop alone."""
    model = _model(registry)
    from alter.training.stages import prepare_stage

    trainable = prepare_stage(model, StageConfig("stage2", early_stopping=None))
    EarlyStopper(model, EarlyStoppingConfig(per_task=True), trainable, None)  # no error
    owned = model.task_parameters(model.task_id("rte"))
    assert {name for name in owned if "gate" in name} and all(owned[name] == 1 for name in owned if "gate" in name)


def test_early_stopping_needs_evaluations_and_validation_examples():
    with pytest.raises(ConfigError, match="early_stopping: set eval_every"):
        parse_config({"data": {"tasks": ["rte"], "validation": 10},
                      "stages": [{"kind": "stage1", "early_stopping": {"patience": 2}}]})
    with pytest.raises(ConfigError, match="set data.validation"):
        parse_config({"data": {"tasks": ["rte"]},
                      "stages": [{"kind": "stage1", "eval_every": 5, "early_stopping": {"patience": 2}}]})


def test_an_auxiliary_task_with_validation_examples_stops_on_them_and_stays_out_of_the_report(tmp_path):
    """An auxiliary task trains to its own plateau (its own validation examples, when it names
    some) and is still never scored: no dev score, no validation macro, no calibration."""
    config = tiny(tmp_path, "aux", "data.validation=4", "data.tasks=[sst2, {name: rte, scored: false, validation: 4}]",
                  "stages=[{kind: stage1, steps: 8, batch_size: 4, eval_every: 2, "
                  "early_stopping: {patience: 1, per_task: true, until_learned: false}}]")
    assert {ref.name: ref.validation for ref in config.data.refs()} == {"sst2": 4, "rte": 4}
    report = run_training(config)
    records = [json.loads(line) for line in (tmp_path / "aux" / "log.jsonl").read_text().splitlines()]
    checked = [record["eval_scores"] for record in records if "eval_scores" in record]
    assert checked and all(set(scores) == {"sst2", "rte"} for scores in checked)  # rte's own examples decide
    assert set(report["metrics"]) == set(report["validation"]["metrics"]) == {"sst2"}


# --- task clocks (`task_steps`) ------------------------------------------------------------------

CLOCK_RATES = {"sst2": 0.75, "rte": 0.25}  # rte draws a quarter of the one-task batches


def _clock_stage(task_steps: int = 100, patience: int = 2, steps: int = 60) -> StageConfig:
    return StageConfig("stage1", steps=steps, lr=5e-2, warmup_ratio=0.0, eval_every=2, save_every=4, log_every=1,
                       batches="one_task", task_steps=task_steps,
                       early_stopping=EarlyStoppingConfig(patience=patience, per_task=True, until_learned=False))


def test_on_task_clocks_patience_counts_the_task_s_own_batches(registry, samples, tmp_path):
    """rte peaks at the first check and never gains again: it stops at the first check by which
    it has trained patience x eval_every = 4 batches of its own since then, however many checks
    that takes; sst2, improving at every check, stops only when rte's rows are gone and its own
    peak is behind it."""
    model = _model(registry)
    script = {"sst2": [i / 100 for i in range(40)], "rte": [0.0, 0.7] + [0.6] * 40}
    log = tmp_path / "log.jsonl"
    train_stage(model, _clock_stage(), stage_rows(model, samples, CLOCK_RATES), tmp_path / "s1", RunLog(log), 0,
                validation_scores=Scripted(model, script))
    records = _log(log)
    checks = [r for r in records if "eval_scores" in r]
    rte_stop = next(r["step"] for r in records if "rte" in r.get("stopped_tasks", []))
    own = {r["step"]: r["task_batches"]["rte"] for r in checks}
    peak = own[2]
    assert own[rte_stop] - peak >= 4
    assert all(own[step] - peak < 4 for step in own if 2 < step < rte_stop)
    assert rte_stop > 6  # two checks after its peak, as without clocks, it had trained fewer than 4
    # Each step is one task's batch, and the clocks count them.
    steps = [r for r in records if "task_loss" in r]
    assert all(len(r["task_loss"]) == 1 for r in steps)
    assert checks[-1]["task_batches"]["rte"] == sum("rte" in r["task_loss"] for r in steps
                                                    if r["step"] <= checks[-1]["step"])


def test_on_task_clocks_each_task_s_learning_rate_follows_its_own_batches(registry, samples, tmp_path):
    """Linear decay without warmup over task_steps = 20 of a task's own batches: a step of a
    task that has trained n batches runs at lr x (1 - n / 20); a task whose clock runs out is
    scored once more and stops, and the stage ends when both have."""
    model = _model(registry)
    log = tmp_path / "log.jsonl"
    script = {"sst2": [i / 100 for i in range(40)], "rte": [i / 100 for i in range(40)]}  # always gaining
    result = train_stage(model, _clock_stage(task_steps=20), stage_rows(model, samples, CLOCK_RATES),
                         tmp_path / "s1", RunLog(log), 0, validation_scores=Scripted(model, script))
    records = _log(log)
    trained = {"sst2": 0, "rte": 0}
    for record in (r for r in records if "task_loss" in r):
        (task,) = record["task_loss"]
        assert record["lr"] == pytest.approx(5e-2 * (1 - trained[task] / 20))
        trained[task] += 1
    assert trained == {"sst2": 20, "rte": 20} and result.steps == 40
    run_out = [r for r in records if "clocks_run_out" in r]
    assert [task for r in run_out for task in r["clocks_run_out"]] == ["sst2", "rte"]
    assert run_out[-1]["stopped_tasks"] == ["sst2", "rte"]
    scored_at = {r["step"] for r in records if "eval_scores" in r}
    assert all(r["step"] in scored_at for r in run_out)  # each scored at the step its clock ran out


def test_an_interrupted_stage_on_task_clocks_resumes_to_the_same_weights(registry, samples, tmp_path, monkeypatch):
    script = {"sst2": [0.0, 0.7] + [0.6] * 40, "rte": [0.0, 0.5, 0.55, 0.6, 0.65, 0.7] + [0.6] * 40}
    stage = _clock_stage(task_steps=14)
    whole = _model(registry)
    done = train_stage(whole, stage, stage_rows(whole, samples, CLOCK_RATES), tmp_path / "whole",
                       RunLog(tmp_path / "whole.jsonl"), 0, validation_scores=Scripted(whole, script))

    model = _model(registry)
    evaluate = Scripted(model, script)
    _crash_at_step_11(model, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_stage(model, stage, stage_rows(model, samples, CLOCK_RATES), tmp_path / "crash",
                    RunLog(tmp_path / "crash.jsonl"), 0, validation_scores=evaluate)
    resumed = _model(registry)
    again = train_stage(resumed, stage, stage_rows(resumed, samples, CLOCK_RATES), tmp_path / "crash",
                        RunLog(tmp_path / "crash.jsonl"), 0, validation_scores=Scripted(resumed, script, done=6))
    assert again.steps == done.steps
    for name, value in resumed.named_parameters():
        torch.testing.assert_close(value.detach(), dict(whole.named_parameters())[name].detach(), rtol=0, atol=0)
    clocks = [[r["task_batches"] for r in _log(path) if "task_batches" in r][-1]
              for path in (tmp_path / "whole.jsonl", tmp_path / "crash.jsonl")]
    assert clocks[0] == clocks[1]


@pytest.mark.parametrize("settings,error", [
    ({"batches": "mixed"}, "batches: one_task"),
    ({"grad_accum": 2}, "grad_accum: 1"),
    ({"early_stopping": {"patience": 2}}, "per_task: true"),
])
def test_task_clocks_need_one_task_per_step_and_per_task_stopping(settings, error):
    stage = {"kind": "stage1", "steps": 10, "eval_every": 2, "batches": "one_task", "task_steps": 5,
             "early_stopping": {"patience": 2, "per_task": True}, **settings}
    with pytest.raises(ConfigError, match=error):
        parse_config({"data": {"tasks": ["rte"], "validation": 10}, "stages": [stage]})
