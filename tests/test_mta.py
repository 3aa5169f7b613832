"""MTA behaviour on tiny random Llama, T5 and BERT configs."""

from __future__ import annotations

import pytest
import torch

import alter
from alter.config import StageConfig
from alter.data.collate import Encoded
from alter.models.mta_model import MTAModel
from alter.mta import MTAConfig, RoutingError
from alter.mta.experts import LoRAExpertLinear
from alter.mta.inject import UnsupportedBackboneError
from alter.training.stages import prepare_stage
from tests.conftest import FAMILIES, examples_for, model_config, randomise_experts, tasks_for


@pytest.mark.parametrize("backbone,head", FAMILIES)
@pytest.mark.parametrize("kind", ["bottleneck", "lora", "ffn_copy"])
def test_fresh_mta_model_computes_what_the_backbone_computes(registry, samples, backbone, head, kind):
    if kind == "ffn_copy" and backbone in ("tiny-bert", "tiny-bart"):
        pytest.skip("BERT and BART split their FFN over two modules: no single FFN to copy")
    tasks = tasks_for(registry, head)
    examples = examples_for(samples, head)
    torch.manual_seed(0)
    plain = MTAModel(model_config(backbone, head, enabled=False), tasks).eval()
    torch.manual_seed(0)  # same head initialisation
    mta = MTAModel(model_config(backbone, head, kind=kind), tasks).eval()
    assert len(mta.mta_layers) > 0
    with torch.no_grad():
        expected, got = plain(plain.encode(examples)), mta(mta.encode(examples))
    if kind == "ffn_copy":  # a weighted sum of identical copies: equal up to rounding
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("backbone,head", FAMILIES[:3])
@pytest.mark.parametrize("gate", ["task", "task+input"])
def test_mixed_task_batch_equals_single_task_batches(registry, samples, backbone, head, gate):
    tasks = tasks_for(registry, head)
    model = MTAModel(model_config(backbone, head, gate=gate), tasks).eval()
    randomise_experts(model)
    model.start_collaboration("softmax", 0.6)
    examples = examples_for(samples, head)
    with torch.no_grad():
        mixed = model(model.encode(examples))
        single = torch.cat([model(model.encode([e for e in examples if e.task == t.name])) for t in tasks])
    torch.testing.assert_close(mixed, single, atol=1e-5, rtol=1e-5)
    mixed_predictions = model.predict(examples, batch_size=16, max_new_tokens=6)
    single_predictions = [p for t in tasks for p in model.predict([e for e in examples if e.task == t.name],
                                                                  batch_size=16, max_new_tokens=6)]
    for (a, scores_a), (b, scores_b) in zip(mixed_predictions, single_predictions):
        if isinstance(a, float):
            assert a == pytest.approx(b, abs=1e-4)
        else:
            assert a == b
        assert scores_a == pytest.approx(scores_b, abs=1e-4)


def test_experts_change_outputs_per_task(registry, samples):
    """Different tasks routed to different experts give different outputs for the same text."""
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama"), tasks).eval()
    randomise_experts(model)
    rows = model.encode([samples["sst2"][0]])
    rows_other = [Encoded(1, rows[0].input_ids, rows[0].labels)]  # the same tokens, routed as stsb
    with torch.no_grad():
        assert not torch.equal(model(rows), model(rows_other))


def test_stage2_trains_only_the_gates(registry, samples):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama"), tasks)
    randomise_experts(model)
    experts_before = {n: p.clone() for n, p in model.param_groups()["experts"].items()}
    trainable = prepare_stage(model, StageConfig(kind="stage2", own_expert_weight=0.8))
    assert set(trainable) == set(model.param_groups()["gates"])
    gates_before = {n: p.clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=0.1)
    for _ in range(3):
        model(model.encode(examples_for(samples, "lm"))).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.param_groups()["experts"].items():
        assert torch.equal(param, experts_before[name]), name
    assert any(not torch.equal(p, gates_before[n]) for n, p in trainable.items())


def test_softmax_stage2_gates_start_near_the_assignment(registry):
    model = MTAModel(model_config("tiny-llama"), tasks_for(registry, "lm"))
    weights = model.task_gate_weights()  # (L, tasks, K + 1): the shared expert last
    assert torch.equal(weights[0], _stage1_gates(3))  # stage 1: one expert per task, and the shared one
    model.start_collaboration("softmax", 0.8)
    weights = model.task_gate_weights()
    torch.testing.assert_close(weights[..., :3].diagonal(dim1=1, dim2=2), torch.full((2, 3), 0.8))
    assert (weights[..., 3] == 1).all()


def _stage1_gates(tasks: int) -> torch.Tensor:
    """(tasks, tasks + 1): each task's own expert, and the shared expert (the default) at weight 1."""
    return torch.cat([torch.eye(tasks), torch.ones(tasks, 1)], dim=1)


@pytest.mark.parametrize("backbone,head", FAMILIES[:3])
@pytest.mark.parametrize("gate", ["task", "task+input"])
def test_residual_stage2_starts_from_the_stage1_model(registry, samples, backbone, head, gate):
    """Leaving stage 1 changes nothing at step 0, and the first step moves the other experts' weights."""
    tasks = tasks_for(registry, head)
    model = MTAModel(model_config(backbone, head, gate=gate), tasks).eval()
    randomise_experts(model)
    rows = model.encode(examples_for(samples, head))
    with torch.no_grad():
        stage1 = model(rows)
    trainable = prepare_stage(model, StageConfig(kind="stage2"))
    model.eval()
    # Stage 1 computes each row's own expert alone, stage 2 every expert: equal up to rounding.
    torch.testing.assert_close(model(rows).detach(), stage1, atol=1e-6, rtol=1e-6)
    assert torch.equal(model.task_gate_weights()[0], _stage1_gates(len(tasks)))
    model(rows).mean().backward()
    logits = [param for name, param in trainable.items() if name.endswith("task_logits")]
    off_own = ~torch.eye(len(tasks), dtype=torch.bool)
    assert all(param.grad[off_own].abs().sum() > 0 for param in logits), "no gradient reaches the other experts"


def test_top_k_and_shared_expert(registry, samples):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", kind="bottleneck", num_experts=4, top_k=2, shared_expert=True), tasks)
    model.start_collaboration("softmax", 0.7)
    weights = model.task_gate_weights()
    assert weights.shape == (2, 3, 5)  # four routed experts and the shared one, last
    assert ((weights[..., :4] > 0).sum(-1) == 2).all() and (weights[..., 4] == 1).all()
    assert model.mta_layers[0].experts.down.shape[0] == 5  # four routed experts and a shared one
    model(model.encode(examples_for(samples, "lm"))).mean().backward()


def test_by_kind_assignment_groups_tasks(registry):
    tasks = [registry.get(n) for n in ("sst2", "cola", "rte", "dialogsum")]
    model = MTAModel(model_config("tiny-llama", assignment="by_kind"), tasks)
    assert model.mta_layers[0].gate.assignment.tolist() == [0, 0, 1, 2]


def test_too_few_experts_is_a_clear_error(registry):
    with pytest.raises(ValueError, match="num_experts"):
        MTAModel(model_config("tiny-llama", num_experts=2), tasks_for(registry, "lm"))


def test_mta_layer_outside_the_model_says_how_to_route(registry):
    model = MTAModel(model_config("tiny-llama"), tasks_for(registry, "lm"))
    with pytest.raises(RoutingError, match="routing"):
        model.backbone(input_ids=torch.tensor([[5, 6, 7]]))


ATTENTION_TARGETS = [("tiny-llama", "lm", ["self_attn.q_proj", "self_attn.v_proj"]),
                     ("tiny-t5", "lm", ["layer.0.SelfAttention.q", "layer.0.SelfAttention.v"]),
                     ("tiny-gpt2", "lm", ["attn.c_attn"]),
                     ("tiny-bert", "classifier", ["attention.self.query", "attention.self.value"])]


@pytest.mark.parametrize("backbone,head,targets", ATTENTION_TARGETS)
def test_lora_experts_in_attention_route_every_row_to_its_task(registry, samples, backbone, head, targets):
    """LoRA experts on attention projections: a fresh model is its backbone, experts matter once
    trained, and a mixed-task batch equals its tasks' batches alone."""
    tasks = tasks_for(registry, head)
    examples = examples_for(samples, head)
    plain = MTAModel(model_config(backbone, head, enabled=False), tasks).eval()
    model = MTAModel(model_config(backbone, head, kind="lora", targets=targets), tasks).eval()
    model.head.load_state_dict(plain.head.state_dict())
    with torch.no_grad():
        assert torch.equal(model(model.encode(examples)), plain(plain.encode(examples)))
    randomise_experts(model)
    model.start_collaboration("softmax", 0.6)
    with torch.no_grad():
        mixed = model(model.encode(examples))
        single = torch.cat([model(model.encode([e for e in examples if e.task == t.name])) for t in tasks])
        assert not torch.allclose(mixed, plain(plain.encode(examples)))
    torch.testing.assert_close(mixed, single, atol=1e-5, rtol=1e-5)


DEFAULT_TARGETS = {"tiny-llama": {"q_proj", "v_proj"}, "tiny-t5": {"q", "v"}, "tiny-gpt2": {"c_attn"},
                   "tiny-bert": {"query", "value"}, "tiny-bart": {"q_proj", "v_proj"}}


@pytest.mark.parametrize("backbone, head", FAMILIES)
def test_the_default_experts_are_lora_on_the_attention_s_query_and_value_beside_a_shared_one(registry, backbone,
                                                                                              head):
    tasks = tasks_for(registry, head)
    model = MTAModel(model_config(backbone, head), tasks)
    wrapped = {name.rpartition(".")[2] for name, module in model.backbone.named_modules()
               if isinstance(module, LoRAExpertLinear)}
    assert wrapped == DEFAULT_TARGETS[backbone]  # where PEFT puts LoRA in the family
    assert model.expert_plan.shared and model.expert_plan.total == len(tasks) + 1
    assert {module.lora_A.shape[-1] for module in model.backbone.modules()
            if isinstance(module, LoRAExpertLinear)} == {8}  # rank 8 (A is (K, in, r))


def test_bottleneck_experts_keep_the_settings_they_were_measured_with():
    assert (MTAConfig(kind="bottleneck").rank, MTAConfig(kind="bottleneck").shared_expert) == (16, False)
    assert MTAConfig(kind="bottleneck", rank=4, shared_expert=True).shared_expert
    assert not MTAConfig(kind="ffn_copy").shared_expert


def test_an_unknown_lora_target_names_the_block_s_linear_layers(registry):
    with pytest.raises(UnsupportedBackboneError, match=r"mta.targets: no layer 'attn.q'.*self_attn.q_proj"):
        MTAModel(model_config("tiny-llama", kind="lora", targets=["attn.q"]), tasks_for(registry, "lm"))


def test_a_shared_lora_expert_in_attention_trains_on_every_task(registry, samples):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", kind="lora", shared_expert=True,
                                  targets=["self_attn.q_proj", "self_attn.v_proj"]), tasks)
    prepare_stage(model, StageConfig(kind="stage1"))
    lora = model.backbone.model.layers[0].self_attn.q_proj
    assert lora.lora_A.shape[0] == len(tasks) + 1  # one expert per task and the shared one
    with torch.no_grad():
        lora.lora_B.normal_()  # zero at first, which would stop every gradient to lora_A
    model(model.encode([samples["sst2"][0]])).sum().backward()  # one sst2 row
    touched = lora.lora_A.grad.abs().sum(dim=(1, 2)) > 0  # (K + 1,)
    assert touched.tolist() == [True, False, False, True]  # sst2's own expert and the shared one


def test_lora_experts_start_as_peft_lora_starts(registry):
    """Task experts and the PEFT LoRA baselines take steps of one size at one learning rate."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = MTAModel(model_config("tiny-llama", kind="lora", targets=["self_attn.q_proj"]), tasks_for(registry, "lm"))
    ours = model.backbone.model.layers[0].self_attn.q_proj
    plain = AutoModelForCausalLM.from_config(model.backbone.config)
    theirs = get_peft_model(plain, LoraConfig(r=ours.lora_A.shape[-1], target_modules=["q_proj"]))
    reference = theirs.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight  # (r, in)
    bound = 1.0 / reference.shape[1] ** 0.5
    assert reference.abs().max() <= bound and ours.lora_A.abs().max() <= bound
    assert ours.lora_A.std().item() == pytest.approx(reference.std().item(), rel=0.15)
    assert (ours.lora_B == 0).all()


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_residual_stage2_learns_how_much_each_task_takes_from_the_shared_expert(registry, samples, kind):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", kind=kind, shared_expert=True), tasks).eval()
    randomise_experts(model)
    rows = model.encode(examples_for(samples, "lm"))
    with torch.no_grad():
        stage1 = model(rows)
    trainable = prepare_stage(model, StageConfig(kind="stage2"))
    model.eval()
    # The shared expert still at weight 1 (up to rounding: stage 1 computed two experts, stage 2 all).
    torch.testing.assert_close(model(rows).detach(), stage1, atol=1e-6, rtol=1e-6)
    start = torch.cat([torch.eye(len(tasks)), torch.ones(len(tasks), 1)], dim=1)  # (tasks, K + 1)
    assert torch.equal(model.task_gate_weights()[0], start)
    model(rows).mean().backward()
    shared = [param for name, param in trainable.items() if name.endswith("shared_logits")]
    assert len(shared) == len(model.mta_layers) and all((param.grad != 0).all() for param in shared)


def test_tied_stage2_gates_are_one_set_of_numbers_fitted_on_every_layer(registry, samples, tmp_path):
    tasks = tasks_for(registry, "lm")
    model = MTAModel(model_config("tiny-llama", kind="lora", shared_expert=True), tasks).eval()
    randomise_experts(model)
    rows = model.encode(examples_for(samples, "lm"))
    with torch.no_grad():
        stage1 = model(rows)
    trainable = prepare_stage(model, StageConfig(kind="stage2", gate_layers="tied"))
    model.eval()
    assert torch.equal(model(rows).detach(), stage1)  # still the stage-1 model at step 0
    assert len(trainable) == 2 and all(".layers.0.mta.gate." in name for name in trainable)
    gates = [layer.gate for layer in model.mta_layers]
    assert all(gate.task_logits is gates[0].task_logits for gate in gates)
    model(rows).mean().backward()
    tied_grad = gates[0].task_logits.grad.clone()
    tied = gates[0].task_logits
    for gate in gates:  # untied copies: the tied weights' gradient is the sum of theirs
        gate.task_logits = torch.nn.Parameter(tied.detach().clone())
    model(rows).mean().backward()
    torch.testing.assert_close(tied_grad, sum(gate.task_logits.grad for gate in gates))
    assert all(gate.task_logits.grad.abs().sum() > 0 for gate in gates)
    for gate in gates:
        gate.task_logits = tied
    torch.optim.AdamW(trainable.values(), lr=0.1).step()
    with torch.no_grad():
        expected = model(rows)
    assert not torch.equal(expected, stage1)
    model.save(tmp_path / "model")  # tied weights are written under every layer's name
    loaded = alter.load(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(rows), expected)
    weights = loaded.task_gate_weights()  # (L, tasks, K + 1)
    assert all(torch.equal(layer_weights, weights[0]) for layer_weights in weights)
