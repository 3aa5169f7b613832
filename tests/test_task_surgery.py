"""A task added to a trained MTA model leaves every old task's answers exactly as they were."""

import pytest
import torch

from alter.config import StageConfig
from alter.models.mta_model import MTAModel
from alter.models.task_surgery import TaskSurgeryError, with_task_added, with_task_removed
from alter.mta import ExpertModule, TaskGate
from tests.conftest import FAMILIES, examples_for, model_config, randomise_experts, tasks_for


def _scores(model, examples):
    return model.predict(examples, max_new_tokens=4)


EXPERTS = {"bottleneck": {"kind": "bottleneck"}, "lora_attention": {"kind": "lora"},
           "lora_ffn": {"kind": "lora", "targets": "ffn"}}


@pytest.mark.parametrize("backbone, head", FAMILIES)
@pytest.mark.parametrize("experts", EXPERTS)
@pytest.mark.parametrize("collaboration", [None, "residual", "softmax"])
@pytest.mark.parametrize("shared_expert", [False, True])
def test_old_tasks_answer_exactly_as_before(registry, samples, backbone, head, experts, collaboration, shared_expert):
    tasks = tasks_for(registry, head)
    old_tasks, new_task = tasks[:-1], tasks[-1]
    model = MTAModel(model_config(backbone, head, **EXPERTS[experts], rank=4, shared_expert=shared_expert),
                     old_tasks).eval()
    if collaboration:
        model.begin_stage(StageConfig(kind="stage2", steps=1, collaboration=collaboration))
    randomise_experts(model)
    with torch.no_grad():  # gates that draw on every expert
        for param in model.param_groups()["gates"].values():
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    examples = [e for e in examples_for(samples, head) if e.task != new_task.name]
    before = _scores(model, examples)
    grown = with_task_added(model, new_task)
    assert [task.name for task in grown.tasks] == [task.name for task in tasks]
    new_expert = int(grown.expert_plan.assignment[-1])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the new expert computes something, and its gate row draws on every expert
        for module in grown.modules():
            if isinstance(module, ExpertModule):
                for param in module.expert_parameters():
                    param[new_expert] = torch.randn(param.shape[1:], generator=generator) * 0.2
            if isinstance(module, TaskGate) and module.task_logits is not None:
                module.task_logits[-1] = torch.randn(module.task_logits.shape[1], generator=generator)
    assert _scores(grown, examples) == before
    new_examples = [e for e in examples_for(samples, head) if e.task == new_task.name]
    assert len(_scores(grown, new_examples)) == len(new_examples)


def test_the_grown_model_saves_and_loads_with_its_groups(registry, samples, tmp_path):
    import alter

    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", "lm", kind="lora", rank=4), tasks[:-1]).eval()
    model.begin_stage(StageConfig(kind="stage2", steps=1))
    randomise_experts(model)
    grown = with_task_added(model, tasks[-1])
    randomise_experts(grown, seed=3)
    examples = examples_for(samples, "lm")
    expected = grown.predict(examples, max_new_tokens=4)
    grown.save(tmp_path / "grown")
    loaded = alter.load(tmp_path / "grown", "none")
    assert loaded.config.mta.expert_groups == [2, 1]
    assert loaded.predict(examples, max_new_tokens=4) == expected


def test_a_folder_saved_before_the_current_defaults_loads_as_it_was_made_and_takes_a_task(registry, samples,
                                                                                          tmp_path):
    import json

    import alter

    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", "lm", kind="lora", rank=4, targets="ffn", shared_expert=False),
                     tasks[:-1]).eval()
    randomise_experts(model)
    examples = [e for e in examples_for(samples, "lm") if e.task != tasks[-1].name]
    expected = model.predict(examples, max_new_tokens=4)
    model.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "alter.json"
    meta = json.loads(meta_path.read_text())
    for field in ("targets", "shared_expert", "expert_groups"):  # written by code older than these fields
        del meta["model"]["mta"][field]
    meta_path.write_text(json.dumps(meta))
    loaded = alter.load(tmp_path / "old", "none")
    assert (loaded.config.mta.targets, loaded.config.mta.shared_expert) == ("ffn", False)
    assert loaded.predict(examples, max_new_tokens=4) == expected
    grown = with_task_added(loaded, tasks[-1])
    assert grown.predict(examples, max_new_tokens=4) == expected


def test_what_cannot_take_a_task_says_why(registry):
    from alter.config import SharedLoraConfig

    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", "lm", rank=4), tasks[:-1])
    with pytest.raises(TaskSurgeryError, match="already has a task 'sst2'"):
        with_task_added(model, tasks[0])
    shared_lora = MTAModel(model_config("tiny-llama", "lm", enabled=False).model_copy(
        update={"lora": SharedLoraConfig()}), tasks[:-1])
    with pytest.raises(TaskSurgeryError, match="only a model with MTA experts"):
        with_task_added(shared_lora, tasks[-1])
    model.backbone_trained = True
    with pytest.raises(TaskSurgeryError, match="backbone was trained"):
        with_task_added(model, tasks[-1])


def test_ffn_copy_experts_cannot_be_grown(registry):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", "lm", kind="ffn_copy"), tasks[:-1])
    with pytest.raises(TaskSurgeryError, match="ffn_copy"):
        with_task_added(model, tasks[-1])


def _old_and_new(model, grown) -> tuple[dict, dict]:
    """The grown model's trained weights, split into the old model's part and the rest."""
    old = model.trained_state()
    state = grown.trained_state()
    return {name: value for name, value in state.items() if name in old}, state


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
@pytest.mark.parametrize("collaboration", [None, "residual", "softmax"])
def test_training_the_added_task_leaves_the_old_ones_exactly_as_they_were(registry, samples, tmp_path, kind,
                                                                          collaboration):
    import alter

    tasks = tasks_for(registry, "lm")  # sst2, stsb, then dialogsum added
    model = MTAModel(model_config("tiny-llama", "lm", kind=kind, rank=4), tasks[:-1]).eval()
    if collaboration:
        model.begin_stage(StageConfig(kind="stage2", steps=1, collaboration=collaboration))
    randomise_experts(model)
    examples = [e for e in examples_for(samples, "lm") if e.task != tasks[-1].name]
    before = _scores(model, examples)
    grown = with_task_added(model, tasks[-1])
    untrained = {name: value.clone() for name, value in grown.trained_state().items()}
    stages = [alter.Stage("stage1", steps=3, batch_size=2, lr=1e-2, weight_decay=0.1)]
    if collaboration:
        stages.append(alter.Stage("stage2", steps=2, batch_size=2, lr=1e-1, collaboration=collaboration))
    alter.train(grown, stages, tmp_path / "run", data={"tasks": [tasks[-1].name], "max_train": 8, "max_eval": 2},
                eval={"batch_size": 4, "max_new_tokens": 4, "before_training": False})
    trained = grown.trained_state()
    assert _scores(grown.eval(), examples) == before
    changed = [name for name in trained if not torch.equal(trained[name], untrained[name])]
    assert changed, "the added task learned nothing"
    new_expert = int(grown.expert_plan.assignment[-1])
    for name in changed:  # only the added task's slices and rows moved
        difference = (trained[name] != untrained[name]).reshape(trained[name].shape[0], -1).any(dim=1)
        rows = difference.nonzero().flatten().tolist()
        assert rows in ([new_expert], [len(tasks) - 1]), f"{name} changed in rows {rows}"
    loaded = alter.load(tmp_path / "run" / "model", "none")
    assert _scores(loaded, examples) == before


def test_a_collaboration_for_the_added_task_needs_collaborating_gates(registry, tmp_path):
    import alter

    tasks = tasks_for(registry, "lm")
    grown = with_task_added(MTAModel(model_config("tiny-llama", "lm", rank=4), tasks[:-1]), tasks[-1])
    with pytest.raises(ValueError, match="trained in stage 1 only"):
        alter.train(grown, [alter.Stage("stage2", steps=1, batch_size=2)], tmp_path / "run",
                    data={"tasks": [tasks[-1].name], "max_train": 4, "max_eval": 2})


def _randomise_gates(model, seed: int = 1) -> None:
    with torch.no_grad():
        for param in model.param_groups()["gates"].values():
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("backbone, head", FAMILIES)
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
@pytest.mark.parametrize("collaboration", [None, "residual", "softmax"])
def test_removing_an_added_task_leaves_the_others_as_they_were(registry, samples, backbone, head, kind,
                                                               collaboration):
    tasks = tasks_for(registry, head)
    model = MTAModel(model_config(backbone, head, kind=kind, rank=4), tasks[:-1]).eval()
    shared = model.expert_plan.shared  # the default for LoRA experts
    if collaboration:
        model.begin_stage(StageConfig(kind="stage2", steps=1, collaboration=collaboration))
    randomise_experts(model)
    if collaboration:
        _randomise_gates(model)
    examples = [e for e in examples_for(samples, head) if e.task != tasks[-1].name]
    before = _scores(model, examples)
    grown = with_task_added(model, tasks[-1])
    randomise_experts(grown, seed=7)  # every expert moves, then the old ones are put back
    with torch.no_grad():
        for (name, new), old in zip(grown.param_groups()["experts"].items(), model.param_groups()["experts"].values()):
            new[: model.expert_plan.routed] = old[: model.expert_plan.routed]
            if shared:  # the last expert of both
                new[-1] = old[-1]
    reduced = with_task_removed(grown, tasks[-1].name)
    assert [task.name for task in reduced.tasks] == [task.name for task in tasks[:-1]]
    assert reduced.expert_plan.total == model.expert_plan.total and reduced.config.mta.expert_groups is None
    assert _scores(reduced, examples) == before


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_a_stage1_model_loses_the_removed_tasks_expert_and_nothing_else(registry, samples, kind):
    tasks = tasks_for(registry, "lm")  # sst2, stsb, dialogsum
    model = MTAModel(model_config("tiny-llama", "lm", kind=kind, rank=4), tasks).eval()
    randomise_experts(model)
    kept = [e for e in examples_for(samples, "lm") if e.task != "stsb"]
    before = _scores(model, kept)
    reduced = with_task_removed(model, "stsb")
    assert [task.name for task in reduced.tasks] == ["sst2", "dialogsum"] and reduced.expert_plan.routed == 2
    assert _scores(reduced, kept) == before


def test_an_expert_that_the_others_draw_on_is_not_removed(registry, samples):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", "lm", rank=4), tasks).eval()
    model.begin_stage(StageConfig(kind="stage2", steps=1))
    randomise_experts(model)
    kept = [e for e in examples_for(samples, "lm") if e.task != "stsb"]
    before = _scores(model, kept)
    reduced = with_task_removed(model, "stsb")  # residual gates at their start: nobody draws on it
    assert reduced.expert_plan.routed == 3 and _scores(reduced, kept) == before  # kept in place, zeroed
    _randomise_gates(model)
    with pytest.raises(TaskSurgeryError, match="the gates of dialogsum, sst2 draw on the expert of 'stsb'"):
        with_task_removed(model, "stsb")


def test_what_cannot_be_removed_says_why(registry):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", "lm", rank=4), tasks[:1])
    with pytest.raises(TaskSurgeryError, match="no task 'nope'"):
        with_task_removed(model, "nope")
    with pytest.raises(TaskSurgeryError, match="only task"):
        with_task_removed(model, "sst2")
