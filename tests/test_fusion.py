"""`mta.fusion`: LoRA experts weighed per token by each task's attention over their codes."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

import alter
from alter.config import ConfigError, StageConfig, parse_config
from alter.experiment.config import load_experiment
from alter.experiment.runner import copy_shared_stages, run_experiment
from alter.models.mta_model import MTAModel
from alter.models.task_surgery import TaskSurgeryError, with_task_added, with_task_removed
from alter.mta import ExpertFusion, MTAConfig
from alter.mta.experts import low_rank_mixture
from alter.serve.peft_export import why_not_lora
from alter.training.stages import optimizer_groups, prepare_stage
from tests.conftest import FAMILIES, examples_for, model_config, randomise_experts, tasks_for


def _fused_and_plain(registry, backbone: str, head: str) -> tuple[MTAModel, MTAModel]:
    """Two models with the same weights, one with fusion (its attention still at zero)."""
    tasks = tasks_for(registry, head)
    plain = MTAModel(model_config(backbone, head), tasks).eval()
    randomise_experts(plain)
    fused = MTAModel(model_config(backbone, head, fusion=True), tasks).eval()
    missing, unexpected = fused.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".fusion." in name for name in missing)
    return fused, plain


def _train_fusion(model: MTAModel, rows, steps: int = 3) -> dict[str, torch.nn.Parameter]:
    trainable = prepare_stage(model, StageConfig(kind="stage2"))
    optimizer = torch.optim.AdamW(trainable.values(), lr=0.1)
    for _ in range(steps):
        model(rows).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return trainable


@pytest.mark.parametrize("backbone,head", FAMILIES[:3])
def test_fusion_starts_as_the_model_without_it_and_stage2_trains_it_with_the_gates(registry, samples, backbone,
                                                                                     head):
    fused, plain = _fused_and_plain(registry, backbone, head)
    rows = fused.encode(examples_for(samples, head))
    with torch.no_grad():
        assert torch.equal(fused(rows), plain(rows))  # stage 1: the fixed gates alone
    fusion_names = {name for name, module in fused.named_modules() if isinstance(module, ExpertFusion)}
    assert fusion_names
    prepare_stage(plain, StageConfig(kind="stage2"))
    trainable = prepare_stage(fused, StageConfig(kind="stage2"))
    assert {name.rpartition(".fusion.")[0] + ".fusion" for name in trainable if ".fusion." in name} == fusion_names
    fused.eval(), plain.eval()
    with torch.no_grad():  # a collaboration's start: the fusion's weight is 0, so every token keeps its gate row
        assert torch.equal(fused(rows), plain(rows))
    fused.train()
    experts = {name: param.clone() for name, param in fused.param_groups()["experts"].items()}
    _train_fusion(fused, rows)
    assert all(torch.equal(param, experts[name]) for name, param in fused.param_groups()["experts"].items())
    module = next(module for module in fused.modules() if isinstance(module, ExpertFusion))
    assert module.weight.abs().sum() > 0 and module.query.abs().sum() > 0  # both learn
    fused.eval()
    with torch.no_grad():
        assert not torch.equal(fused(rows), plain(rows))


def test_a_fused_model_saves_loads_predicts_and_generates_the_same(registry, samples, tmp_path):
    fused, _ = _fused_and_plain(registry, "tiny-llama", "lm")
    rows = fused.encode(examples_for(samples, "lm"))
    _train_fusion(fused.train(), rows)
    fused.eval()
    examples = examples_for(samples, "lm")
    expected = fused.predict(examples, batch_size=4, max_new_tokens=6)
    fused.save(tmp_path / "model")
    loaded = alter.load(tmp_path / "model", quantize="none").eval()
    assert loaded.config.mta.fusion
    with torch.no_grad():
        torch.testing.assert_close(loaded(rows), fused(rows))
    assert loaded.predict(examples, batch_size=4, max_new_tokens=6) == expected


def test_fusion_weighs_each_token_by_its_own_scores():
    """The per-token path of low_rank_mixture equals the sum over experts written out."""
    torch.manual_seed(0)
    x, first, second = torch.randn(2, 5, 6), torch.randn(3, 6, 4), torch.randn(3, 4, 7)
    gates, task_ids = torch.rand(2, 3), torch.tensor([1, 0])
    fusion = ExpertFusion(num_tasks=2, in_features=6, rank=4)
    with torch.no_grad():
        fusion.query.normal_(), fusion.weight.fill_(0.5)

    def fuse(flat, codes):
        return fusion(flat, codes, gates, task_ids)

    got = low_rank_mixture(x, first, second, gates, None, fuse=fuse)
    codes = torch.einsum("bli,kir->blkr", x, first)  # (B, L, K, r)
    query = torch.einsum("bli,bir->blr", x, fusion.query[task_ids])
    attention = (torch.einsum("blr,blkr->blk", query, codes) / 2).softmax(-1)  # sqrt(r) = 2
    weights = gates[:, None, :] + 0.5 * attention  # (B, L, K)
    expected = torch.einsum("blk,blkr,kro->blo", weights, codes, second)
    torch.testing.assert_close(got, expected)


def test_fusion_needs_lora_experts_of_every_token_and_refuses_what_would_change_other_tasks(registry):
    with pytest.raises(ValidationError, match="mta.fusion"):
        MTAConfig(kind="bottleneck", fusion=True)
    with pytest.raises(ValidationError, match="mta.fusion"):
        MTAConfig(fusion=True, top_k=1, num_experts=3)
    model = MTAModel(model_config("tiny-llama", fusion=True), tasks_for(registry, "lm"))
    model.start_collaboration()
    with pytest.raises(ValueError, match="cannot be pruned"):
        model.prune_gates(1)
    with pytest.raises(TaskSurgeryError, match="mta.fusion"):
        with_task_added(model, registry.get("rte"))
    with pytest.raises(TaskSurgeryError, match="mta.fusion"):
        with_task_removed(model, "sst2")
    assert "fused by attention" in why_not_lora(model)


FUSED_EXPERIMENT = """
output_dir: {out}
seeds: [0]
base:
  model: {{backbone: tiny-llama, max_source_length: 64, max_target_length: 16}}
  data:
    tasks:
      - {{name: rte, max_train: 16, max_eval: 8}}
      - {{name: stsb, max_train: 16, max_eval: 8}}
  stages:
    - {{kind: stage1, steps: 4, batch_size: 4, lr: 1.0e-3}}
    - {{kind: stage2, steps: 2, batch_size: 4, lr: 1.0e-1}}
  eval: {{batch_size: 8, before_training: false}}
systems:
  mta: {{}}
  fused:
    starts_from: {{system: mta, stage: stage1}}
    set: {{model: {{mta: {{fusion: true}}}}}}
  fused_after_stage2:
    starts_from: {{system: mta, stage: stage2}}
    set: {{model: {{mta: {{fusion: true}}}}}}
"""


def test_a_fused_system_starts_from_the_stage1_of_one_without_fusion_and_from_nothing_later(tmp_path):
    (tmp_path / "experiment.yaml").write_text(FUSED_EXPERIMENT.format(out=tmp_path))
    config = load_experiment(tmp_path / "experiment.yaml")
    run_experiment(config, only=["mta", "fused"])
    shared = json.loads((tmp_path / "seed0" / "fused" / "result.json").read_text())["shared_stages"]
    assert shared == ["stage1"]  # mta's stage 1, not trained again
    trained = alter.load(tmp_path / "seed0" / "fused" / "model", quantize="none")
    fusion = [module for module in trained.modules() if isinstance(module, ExpertFusion)]
    assert trained.config.mta.fusion and fusion and any(module.weight.abs().sum() > 0 for module in fusion)
    with pytest.raises(ConfigError, match="model.mta.fusion"):  # a stage 2 that ran without fusion
        copy_shared_stages(config, "fused_after_stage2", 0, tmp_path / "seed0" / "fused_after_stage2")


def test_fusion_lr_gives_the_fusion_a_learning_rate_of_its_own(registry):
    fused = MTAModel(model_config("tiny-llama", "lm", fusion=True), tasks_for(registry, "lm"))
    stage = StageConfig(kind="stage2", lr=1e-3, fusion_lr=3e-2)
    trainable = prepare_stage(fused, stage)
    groups = optimizer_groups(trainable, stage)
    fusion = {id(param) for name, param in trainable.items() if ".fusion." in name}
    assert [group["lr"] for group in groups] == [1e-3, 3e-2]
    assert {id(param) for param in groups[1]["params"]} == fusion
    assert len(groups[0]["params"]) + len(fusion) == len(trainable) and fusion
    assert len(optimizer_groups(trainable, StageConfig(kind="stage2", lr=1e-3))) == 1  # unset: one group
    plain = MTAModel(model_config("tiny-llama", "lm"), tasks_for(registry, "lm"))
    with pytest.raises(ValueError, match="fusion_lr is set but no mta.fusion weight trains"):
        optimizer_groups(prepare_stage(plain, stage), stage)
    stages = [{"kind": "stage1"}, {"kind": "stage2", "fusion_lr": 1e-2}]
    with pytest.raises(ConfigError, match="stages.1.fusion_lr"):  # a config says so before anything is built
        parse_config({"data": {"tasks": ["rte"]}, "stages": stages})
    with pytest.raises(ConfigError, match="stages.0.fusion_lr"):  # stage 1 never trains the fusion
        parse_config({"model": {"mta": {"fusion": True}}, "data": {"tasks": ["rte"]},
                      "stages": [{"kind": "stage1", "fusion_lr": 1e-2}]})
    assert parse_config({"model": {"mta": {"fusion": True}}, "data": {"tasks": ["rte"]}, "stages": stages})
