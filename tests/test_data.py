"""Tasks, files, mixtures: real GLUE / DialogSum files and a user's own CSV."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alter.config import ConfigError, parse_config
from alter.data.mixture import batch_plan, mixture_rates
from alter.data.readers import DataError
from alter.data.registry import TaskNotFoundError, TaskRegistry, builtin_registry
from alter.data.spec import TaskSpec
from alter.data.task import Example, data_root
from alter.training.datasets import load_split, load_tasks, load_training


def test_builtin_tasks_read_the_shared_data(registry):
    root = data_root()
    sizes = {name: len(registry.get(name).read("dev", root)) for name in ("sst2", "cola", "mrpc", "stsb", "rte")}
    assert sizes == {"sst2": 872, "cola": 1043, "mrpc": 408, "stsb": 1500, "rte": 277}
    dialog = registry.get("dialogsum").read("dev", root)[0]
    assert dialog.target and dialog.references[0] == dialog.target


def test_qqp_skips_its_one_joined_line_with_a_warning(registry, caplog):
    examples = registry.get("qqp").read("dev", data_root())
    assert len(examples) > 1900
    assert "skipped 1 malformed row" in caplog.text


def test_unknown_task_names_the_known_ones(registry):
    with pytest.raises(TaskNotFoundError, match="unknown task 'sst3'.*sst2"):
        registry.get("sst3")


def test_duplicate_task_names_are_an_error(registry):
    spec = registry.get("sst2").spec
    with pytest.raises(ValueError, match="registered twice"):
        TaskRegistry([spec, spec])


def user_spec(tmp_path, rows: str, **extra) -> TaskSpec:
    (tmp_path / "tickets.csv").write_text(rows)
    return TaskSpec.model_validate({
        "name": "tickets", "kind": "classification", "inputs": {"text": "body"}, "target": "team",
        "labels": ["billing", "tech"], "template": "Ticket: {text}\nTeam:",
        "splits": {"train": {"path": str(tmp_path / "tickets.csv")}}, **extra})


def test_user_task_from_csv(tmp_path):
    spec = user_spec(tmp_path, 'body,team\n"My card, it was charged twice",billing\nThe app crashes,tech\n')
    task = builtin_registry([spec]).get("tickets")
    examples = task.read("train", tmp_path)
    assert [e.target for e in examples] == ["billing", "tech"]
    assert examples[0].inputs["text"] == "My card, it was charged twice"
    assert task.target_text(examples[0]) == "billing"


def test_label_outside_the_label_set_names_file_and_line(tmp_path):
    spec = user_spec(tmp_path, "body,team\nhello,billing\nhi,sales\n")
    with pytest.raises(DataError, match=r"tickets.csv:3: label 'sales'"):
        builtin_registry([spec]).get("tickets").read("train", tmp_path)


def test_many_malformed_rows_are_an_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"body": "a", "team": "tech"}) + "\n{not json\n{also not\n" * 3)
    spec = TaskSpec.model_validate({
        "name": "bad", "kind": "classification", "inputs": {"text": "body"}, "target": "team",
        "labels": ["tech"], "template": "{text}", "splits": {"train": {"path": str(path)}}})
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        TaskRegistry([spec]).get("bad").read("train", tmp_path)


def test_an_empty_input_field_is_an_error_naming_file_line_and_column(tmp_path):
    spec = user_spec(tmp_path, 'body,team\nhello,billing\n"  ",tech\n')
    with pytest.raises(DataError, match=r"tickets.csv:3: input field 'text' \(column 'body'\) of task tickets is emp"):
        builtin_registry([spec]).get("tickets").read("train", tmp_path)


def test_an_empty_field_is_reported_with_the_rows_that_would_be_skipped(tmp_path):
    """Both what stops the read and what it would skip, before and after the bad row."""
    spec = user_spec(tmp_path, 'body,team\nhello,billing\none,too,many\n"  ",tech\nfour,five,six\n')
    with pytest.raises(DataError) as error:
        builtin_registry([spec]).get("tickets").read("train", tmp_path)
    message = str(error.value)
    assert "tickets.csv:4: input field 'text' (column 'body') of task tickets is empty" in message
    assert "also has 2 malformed row(s), which would be skipped: line 3: 3 fields, expected 2; line 5:" in message


def test_a_training_example_without_a_target_is_an_error(tmp_path):
    spec = user_spec(tmp_path, "body,team\nhello,billing\nhi,\n")
    config = parse_config({"data": {"tasks": ["tickets"], "custom_tasks": [spec.model_dump()]}})
    with pytest.raises(DataError, match=r"tickets.csv:3: the target column 'team' of task tickets is empty"):
        load_training(config, load_tasks(config))


def test_a_malformed_row_is_skipped_counted_and_under_strict_an_error(tmp_path):
    rows = "body,team\n" + "".join(f"t{i},tech\n" for i in range(20)) + "one,too,many\n"
    spec = user_spec(tmp_path, rows)
    task = builtin_registry([spec]).get("tickets")
    assert len(task.read("train", tmp_path)) == 20 and task.skipped_rows == {"train": 1}
    config = parse_config({"data": {"tasks": ["tickets"], "custom_tasks": [spec.model_dump()], "strict": True}})
    with pytest.raises(DataError, match=r"tickets.csv:22: 3 fields, expected 2 .*data.strict"):
        load_training(config, load_tasks(config))


def test_missing_file_says_which_path_and_how_to_provide_it(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"SST-2/dev.tsv.*ALTER_DATA_DIR"):
        registry.get("sst2").read("dev", tmp_path)


def test_mixture_rates():
    sizes = {"a": 900, "b": 100}
    assert mixture_rates(sizes) == pytest.approx({"a": 0.9, "b": 0.1})
    assert mixture_rates(sizes, "uniform") == {"a": 0.5, "b": 0.5}
    assert mixture_rates(sizes, "temperature", temperature=2.0) == pytest.approx({"a": 0.75, "b": 0.25})
    assert mixture_rates(sizes, "manual", manual={"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match="no rate for task"):
        mixture_rates(sizes, "manual", manual={"a": 1})


def test_batch_plan_is_fixed_by_the_seed_and_groups_lengths():
    lengths = [[5, 50, 7, 48, 6, 52], [100, 3, 99]]
    plan = batch_plan(lengths, [0.5, 0.5], num_batches=20, batch_size=3, seed=1)
    assert plan == batch_plan(lengths, [0.5, 0.5], num_batches=20, batch_size=3, seed=1)
    assert plan != batch_plan(lengths, [0.5, 0.5], num_batches=20, batch_size=3, seed=2)
    assert len(plan) == 20 and all(len(batch) == 3 for batch in plan)
    spread = sum(max(lengths[t][i] for t, i in b) - min(lengths[t][i] for t, i in b) for b in plan)
    assert spread < 20 * 60  # sorted pools: far less spread than random batches
    counts = {0: 0, 1: 0}
    for batch in plan:
        for task, _ in batch:
            counts[task] += 1
    assert abs(counts[0] - counts[1]) < 20


def test_one_task_batches_hold_one_task_each_drawn_by_the_rates():
    lengths = [[5, 50, 7, 48, 6, 52, 9, 40], [100, 3, 99, 4], [10, 11, 12]]
    plan = batch_plan(lengths, [0.6, 0.3, 0.1], num_batches=200, batch_size=4, seed=3, one_task=True)
    assert plan == batch_plan(lengths, [0.6, 0.3, 0.1], num_batches=200, batch_size=4, seed=3, one_task=True)
    assert len(plan) == 200 and all(len(batch) == 4 for batch in plan)
    tasks = [{task for task, _ in batch} for batch in plan]
    assert all(len(task) == 1 for task in tasks)
    shares = [sum(task == {t} for task in tasks) / 200 for t in range(3)]
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.08)
    # Each task walks through permutations of its examples: every one comes as often as another, give or take one.
    drawn = Counter(index for batch in plan if batch[0][0] == 0 for _, index in batch)
    assert len(drawn) == 8 and max(drawn.values()) - min(drawn.values()) <= 1
    # A task at rate 0 (stopped) gets no batch.
    assert all(batch[0][0] != 2 for batch in batch_plan(lengths, [0.5, 0.5, 0.0], 50, 4, 1, one_task=True))


def test_candidate_distribution_is_one_hot_for_labels_and_splits_scores_between_bins(registry):
    sst2, stsb = registry.get("sst2"), registry.get("stsb")
    assert sst2.candidate_distribution(Example("sst2", {}, "positive")) == [0.0, 1.0]
    assert stsb.candidate_distribution(Example("stsb", {}, 3.2)) == pytest.approx([0, 0, 0, 0.8, 0.2, 0])
    assert stsb.candidate_distribution(Example("stsb", {}, 5.0)) == [0, 0, 0, 0, 0, 1.0]
    assert stsb.candidate_distribution(Example("stsb", {}, 0.0)) == [1.0, 0, 0, 0, 0, 0]


def test_validation_examples_are_held_out_of_training_and_auxiliary_tasks_are_not_scored():
    config = parse_config({"data": {"validation": 20, "tasks": [
        {"name": "rte", "max_train": 100, "max_eval": 30},
        {"name": "cola", "max_train": 100, "validation": 0},
        {"name": "qnli", "train_split": "dev", "scored": False, "max_train": 50}]}})
    tasks = load_tasks(config)
    train = load_split(config, tasks, "train", training=True)
    held = load_training(config, tasks).validation
    dev = load_split(config, tasks, "dev", training=False)
    assert {name: len(rows) for name, rows in train.items()} == {"rte": 100, "cola": 100, "qnli": 50}
    assert {name: len(rows) for name, rows in held.items()} == {"rte": 20}  # cola: 0; qnli: never scored
    assert not {e.source for e in held["rte"]} & {e.source for e in train["rte"]}
    assert set(dev) == {"rte", "cola"} and len(dev["rte"]) == 30
    assert all("QNLI/dev.tsv:" in e.source for e in train["qnli"])  # its dev file, as a training set
    again = load_split(config, tasks, "train", training=True)
    assert [e.source for e in again["rte"]] == [e.source for e in train["rte"]]


def test_held_out_examples_are_apart_from_training_and_validation():
    config = parse_config({"data": {"validation": 10, "held_out": 15, "tasks": [
        {"name": "rte", "max_train": 100}, {"name": "qnli", "train_split": "dev", "scored": False, "max_train": 20}]},
        "stages": [{"kind": "stage1"}, {"kind": "stage2", "train_on": "held_out"}]})
    tasks = load_tasks(config)
    parts = load_training(config, tasks)
    train, held, validation = parts.train, parts.held_out, parts.validation
    assert train == load_split(config, tasks, "train", training=True)
    assert {name: len(rows) for name, rows in held.items()} == {"rte": 15}  # none for an auxiliary task
    parts = [{e.source for e in rows} for rows in (train["rte"], held["rte"], validation["rte"])]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_training_on_held_out_examples_needs_some():
    with pytest.raises(ConfigError, match="stages.1.train_on: held_out needs held-out examples"):
        parse_config({"data": {"tasks": ["rte"]}, "stages": [{"kind": "stage1"},
                                                             {"kind": "stage2", "train_on": "held_out"}]})


def test_an_unknown_metric_is_refused_when_the_task_is_declared(tmp_path):
    with pytest.raises(ValueError, match=r"unknown metric\(s\) acc; known: accuracy"):
        user_spec(tmp_path, "body,team\n", metrics=["acc"])
    with pytest.raises(ValueError, match="main_metric mcc is not one of its metrics"):
        user_spec(tmp_path, "body,team\n", metrics=["accuracy"], main_metric="mcc")


def test_the_data_folder_comes_from_the_config_then_alter_data_dir_then_the_checkout(monkeypatch, tmp_path):
    from alter.data.task import checkout_data

    monkeypatch.setenv("ALTER_DATA_DIR", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "mine")) == tmp_path / "mine"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("ALTER_DATA_DIR")
    checkout = checkout_data()  # this test runs from a source checkout with ../shared/data beside it
    assert checkout is not None and checkout.name == "data" and data_root() == checkout
