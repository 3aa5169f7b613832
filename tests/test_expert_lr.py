"""Per-expert learning rates (`stages[].expert_lr: routed_share`)."""

from __future__ import annotations

import pytest
import torch

from alter.config import SharedLoraConfig, StageConfig
from alter.models.mta_model import MTAModel
from alter.mta.experts import LoRAExpertLinear
from alter.training.expert_lr import ExpertStepScaler, routed_shares
from alter.training.loop import train_stage
from alter.training.rebalance import TaskPlan
from alter.training.run_log import RunLog
from tests.conftest import model_config, stage_rows


def test_scaled_steps_are_exactly_a_learning_rate_per_expert():
    torch.manual_seed(0)
    stacked = torch.nn.Parameter(torch.randn(3, 4, 2))  # three experts
    slices = [torch.nn.Parameter(stacked.detach()[k].clone()) for k in range(3)]
    shares = torch.tensor([1.0, 0.5, 0.25])
    together = torch.optim.AdamW([stacked], lr=0.1, weight_decay=0.01)
    apart = [torch.optim.AdamW([p], lr=0.1 * float(s), weight_decay=0.01) for p, s in zip(slices, shares)]
    scaler = ExpertStepScaler([stacked], shares)
    for step in range(4):
        grads = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(step))
        stacked.grad = grads.clone()
        scaler.before_step()
        together.step()
        scaler.after_step()
        for k, (param, optimizer) in enumerate(zip(slices, apart)):
            param.grad = grads[k].clone()
            optimizer.step()
    torch.testing.assert_close(stacked.detach(), torch.stack([p.detach() for p in slices]))


def test_each_expert_s_share_is_the_rate_of_its_tasks_and_a_shared_expert_serves_all(registry):
    tasks = [registry.get(name) for name in ("sst2", "stsb", "rte")]
    model = MTAModel(model_config("tiny-llama", shared_expert=True), tasks)
    shares = routed_shares(model, ["rte", "sst2", "stsb"], [0.5, 0.3, 0.2])
    torch.testing.assert_close(shares, torch.tensor([0.3, 0.2, 0.5, 1.0]))
    grouped = MTAModel(model_config("tiny-llama", assignment={"sst2": 0, "stsb": 0, "rte": 1}, num_experts=2,
                                    shared_expert=False), tasks)
    torch.testing.assert_close(routed_shares(grouped, ["sst2", "stsb", "rte"], [0.3, 0.2, 0.5]),
                               torch.tensor([0.5, 0.5]))


def _moved_after_one_step(registry, samples, folder, expert_lr: str, shared_expert: bool) -> torch.Tensor:
    """How far each expert's lora_B moved in one stage-1 step, (K,) or (K + 1,)."""
    tasks = [registry.get("sst2"), registry.get("stsb")]
    torch.manual_seed(0)
    model = MTAModel(model_config("tiny-llama", kind="lora", rank=2, shared_expert=shared_expert), tasks)
    lora = next(module for module in model.modules() if isinstance(module, LoRAExpertLinear))
    before = lora.lora_B.detach().clone()  # zero: lora_A gets no gradient at the first step
    stage = StageConfig(kind="stage1", steps=1, lr=1e-2, warmup_ratio=0.0, expert_lr=expert_lr)
    data = stage_rows(model, samples, {"sst2": 0.75, "stsb": 0.25})
    train_stage(model, stage, data, folder / f"{expert_lr}-{shared_expert}", RunLog(folder / "log"), 0)
    return (lora.lora_B.detach() - before).abs().sum(dim=(1, 2))


def test_a_stage_with_routed_shares_moves_each_expert_by_its_share(registry, samples, tmp_path):
    """After one step from zero Adam state, an expert's update is its share of the plain one."""
    moved = {rule: _moved_after_one_step(registry, samples, tmp_path, rule, True) for rule in ("same", "routed_share")}
    assert (moved["same"] > 0).all()  # every expert served some row
    torch.testing.assert_close(moved["routed_share"], moved["same"] * torch.tensor([0.75, 0.25, 1.0]))


@pytest.mark.parametrize("shared_expert, like", [(True, "routed_share"), (False, "same")])
def test_the_default_rule_routes_shares_where_a_shared_expert_trains_beside_task_experts(registry, samples, tmp_path,
                                                                                         shared_expert, like):
    assert StageConfig(kind="stage1").expert_lr == "auto"
    auto = _moved_after_one_step(registry, samples, tmp_path, "auto", shared_expert)
    torch.testing.assert_close(auto, _moved_after_one_step(registry, samples, tmp_path, like, shared_expert))


def test_routed_shares_without_experts_is_a_clear_error(registry, samples, tmp_path):
    config = model_config("tiny-llama", enabled=False).model_copy(update={"lora": SharedLoraConfig()})
    model = MTAModel(config, [registry.get("sst2"), registry.get("stsb")])  # one shared PEFT LoRA
    stage = StageConfig(kind="stage1", steps=1, expert_lr="routed_share")
    with pytest.raises(ValueError, match="expert_lr=routed_share needs MTA experts"):
        data = stage_rows(model, samples, {"sst2": 0.75, "stsb": 0.25})
        train_stage(model, stage, data, tmp_path, RunLog(tmp_path / "log"), 0)


@pytest.mark.parametrize("kind", ["stage1", "joint"])
def test_one_task_batches_leave_the_other_tasks_experts_where_they_are(registry, samples, tmp_path, monkeypatch,
                                                                        kind):
    """With one task per batch, an expert moves only at its task's steps: neither Adam's
    momentum nor (joint) another task's gradient through its small learned gate weight, which
    Adam would scale up to a full step, carries it through the other tasks' batches. A shared
    expert moves at every step."""
    tasks = [registry.get("sst2"), registry.get("stsb")]
    torch.manual_seed(0)
    model = MTAModel(model_config("tiny-llama", kind="lora", rank=2, shared_expert=True), tasks)
    lora = next(module for module in model.modules() if isinstance(module, LoRAExpertLinear))
    stage = StageConfig(kind=kind, steps=12, lr=1e-2, warmup_ratio=0.0, batch_size=2, batches="one_task",
                        save_every=100)
    data = stage_rows(model, samples, {"sst2": 0.5, "stsb": 0.5})
    task_at = [TaskPlan(data, stage, 0).batch(step, 0)[0][0] for step in range(12)]
    assert set(task_at) == {0, 1}
    weights = []  # the experts' weights before each step, then after the last: (K + 1, ...) each
    forward = model.forward

    def recording_forward(rows):
        weights.append(torch.cat([lora.lora_A.detach().flatten(1), lora.lora_B.detach().flatten(1)], 1))
        return forward(rows)

    monkeypatch.setattr(model, "forward", recording_forward)
    train_stage(model, stage, data, tmp_path, RunLog(tmp_path / "log"), 0)
    weights.append(torch.cat([lora.lora_A.detach().flatten(1), lora.lora_B.detach().flatten(1)], 1))
    for step, task in enumerate(task_at):
        moved = [not torch.equal(weights[step + 1][k], weights[step][k]) for k in range(3)]
        assert moved == [task == 0, task == 1, True], f"step {step} (a batch of task {task})"
    if kind == "joint":  # the gates learned meanwhile: each task now draws on the other's expert
        gate = model.mta_layers[0].gate
        assert (gate.task_logits.detach() != 0).all()
