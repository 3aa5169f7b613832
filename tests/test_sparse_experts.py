"""Sparse expert computation: a row computes only the experts its gate selects, and the
result is the dense computation's (every expert, weighted by zeros where the gate says so)."""

from __future__ import annotations

import pytest
import torch

import alter
from alter.config import ConfigError, StageConfig
from alter.models.mta_model import MTAModel
from alter.mta.layer import MTALayer
from tests.conftest import FAMILIES, examples_for, model_config, randomise_experts, tasks_for

EXPERTS = 6


def model_with(registry, backbone: str, head: str, kind: str, gates: str) -> MTAModel:
    """Six experts for three tasks (two for a classifier head), random experts, gates of
    stage 1, a softmax gate of top 2, or residual gates pruned to 2."""
    extra = {"top_k": 2} if gates == "top_k" else {}
    model = MTAModel(model_config(backbone, head, kind=kind, num_experts=EXPERTS, **extra),
                     tasks_for(registry, head)).eval()
    randomise_experts(model)
    if gates != "stage1":
        model.start_collaboration("softmax" if gates == "top_k" else "residual", 0.7)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in model.param_groups()["gates"].values():
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    if gates == "pruned":
        model.prune_gates(2)
    return model


def losses_and_gradients(model: MTAModel, examples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    params = {**model.param_groups()["experts"], **model.param_groups()["gates"]}
    for param in params.values():
        param.requires_grad_(True)
        param.grad = None
    losses = model(model.encode(examples))
    losses.sum().backward()
    return losses.detach(), {name: param.grad.clone() for name, param in params.items() if param.grad is not None}


@pytest.mark.parametrize("backbone,head", FAMILIES)
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
@pytest.mark.parametrize("gates", ["stage1", "top_k", "pruned"])
def test_sparse_experts_compute_what_every_expert_computes(registry, samples, monkeypatch, backbone, head, kind,
                                                           gates):
    model = model_with(registry, backbone, head, kind, gates)
    assert all(layer.gate.most_selected < EXPERTS for layer in model.mta_layers)  # the sparse path runs
    examples = examples_for(samples, head)
    sparse_losses, sparse_grads = losses_and_gradients(model, examples)
    sparse_predictions = model.predict(examples, max_new_tokens=6)

    monkeypatch.setattr(MTALayer, "selected_experts", lambda self, gate_weights: None)  # every expert
    dense_losses, dense_grads = losses_and_gradients(model, examples)
    dense_predictions = model.predict(examples, max_new_tokens=6)

    torch.testing.assert_close(sparse_losses, dense_losses, atol=1e-5, rtol=1e-5)
    assert sparse_grads.keys() == dense_grads.keys() and sparse_grads
    for name in dense_grads:
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    for (sparse, sparse_scores), (dense, dense_scores) in zip(sparse_predictions, dense_predictions):
        assert sparse == (pytest.approx(dense, abs=1e-5) if isinstance(dense, float) else dense)
        assert sparse_scores == pytest.approx(dense_scores, abs=1e-5)


def test_beam_search_rows_select_their_own_experts(registry, samples, monkeypatch):
    model = model_with(registry, "tiny-llama", "lm", "bottleneck", "stage1")
    examples = samples["dialogsum"][:2] + samples["sst2"][:1]
    sparse = model.predict(examples, max_new_tokens=6, num_beams=3)
    monkeypatch.setattr(MTALayer, "selected_experts", lambda self, gate_weights: None)
    assert sparse == model.predict(examples, max_new_tokens=6, num_beams=3)


@pytest.mark.parametrize("gates,top_k,shared,expected", [
    ("stage1", None, False, 1), ("stage1", None, True, 2),  # the own expert (and the shared one)
    ("softmax", 2, False, 2), ("softmax", 2, True, 3),
    ("residual", None, False, EXPERTS),  # dense: every expert is weighed
    ("softmax", None, False, EXPERTS),
])
def test_a_gate_says_how_many_experts_a_row_may_draw_on(registry, gates, top_k, shared, expected):
    model = MTAModel(model_config("tiny-llama", num_experts=EXPERTS, top_k=top_k, shared_expert=shared),
                     tasks_for(registry, "lm"))
    if gates != "stage1":
        model.start_collaboration(gates, 0.7)
    gate = model.mta_layers[0].gate
    assert gate.most_selected == expected
    weights = model.task_gate_weights()
    assert ((weights != 0).sum(-1) <= expected).all()


def test_a_pruned_gate_keeps_each_row_s_largest_weights_at_the_same_total(registry, tmp_path):
    model = model_with(registry, "tiny-llama", "lm", "bottleneck", "residual")
    before = model.task_gate_weights()  # (L, tasks, K)
    model.prune_gates(2)
    after = model.task_gate_weights()
    assert ((after != 0).sum(-1) == 2).all()
    torch.testing.assert_close(after.sum(-1), before.sum(-1))
    largest = before.abs().topk(2, dim=-1).indices
    assert torch.equal(after.gather(-1, largest) != 0, torch.ones_like(largest, dtype=torch.bool))
    assert model.mta_layers[0].gate.most_selected == 2
    model.save(tmp_path / "pruned")
    assert torch.equal(alter.load(tmp_path / "pruned").task_gate_weights(), after)  # saved with the model
    model.start_collaboration("residual")  # a new collaboration learns over every expert again
    assert model.mta_layers[0].gate.most_selected == EXPERTS


def test_pruning_is_for_learned_gates():
    with pytest.raises(ValueError, match="prune_to"):
        StageConfig("stage1", prune_to=2)
    assert StageConfig("stage2", prune_to=2).prune_to == 2


def test_a_run_that_prunes_reports_the_scores_before_pruning(tmp_path):
    from alter.config import load_config
    from alter.training.run import run_training

    config = load_config("configs/tiny.yaml", [f"output_dir={tmp_path / 'run'}", "model.mta.num_experts=4",
                                               "stages.1.prune_to=1", "eval.before_training=false"])
    report = run_training(config)
    assert set(report["after_stage"]) == {"stage2_unpruned"}
    model = alter.load(tmp_path / "run" / "model")
    assert ((model.task_gate_weights() != 0).sum(-1) == 1).all()


def test_prune_to_on_a_model_without_gates_is_refused_before_training(tmp_path):
    from alter.config import load_config
    from alter.training.run import run_training

    config = load_config("configs/tiny.yaml", [f"output_dir={tmp_path / 'run'}", "model.mta.enabled=false",
                                               "stages.1.prune_to=1"])
    with pytest.raises((ConfigError, ValueError), match="prune"):
        run_training(config)
