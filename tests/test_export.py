"""`alter export`: LoRA adapters merge into a plain model that computes what the MTA model
computed for that task, or export as a PEFT adapter that PEFT itself runs to the same logits;
other adapters travel as a checkpoint with its backbone."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import alter
from alter.backbones import resolve_backbone
from alter.config import ModelConfig, SharedLoraConfig
from alter.models.mta_model import MTAModel
from alter.mta import MTAConfig
from alter.mta.routing import routing
from alter.serve.export import export_task
from tests.conftest import model_config, randomise_experts


def task_logits(model: MTAModel, examples) -> torch.Tensor:
    batch = model.head.collate(model.encode(examples, with_target=False), model.tokenizer)
    with torch.no_grad(), routing(batch["task_ids"], batch["pool_masks"]):
        return model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def plain_logits(folder, model: MTAModel, examples) -> torch.Tensor:
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    batch = model.head.collate(model.encode(examples, with_target=False), model.tokenizer)
    with torch.no_grad():
        return plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("collaborating", [False, True])
@pytest.mark.parametrize("shared_expert", [False, True])
def test_lora_experts_merge_into_a_plain_model(registry, samples, tmp_path, backbone, collaborating, shared_expert):
    model = MTAModel(model_config(backbone, kind="lora", rank=4, shared_expert=shared_expert),
                     [registry.get("sst2"), registry.get("stsb")]).eval()
    randomise_experts(model)
    if collaborating:  # learned task gates mix the experts (and weigh the shared one)
        model.start_collaboration("residual")
        with torch.no_grad():
            for layer in model.mta_layers:
                layer.gate.task_logits.uniform_(-0.5, 0.5)
                if layer.gate.shared_logits is not None:
                    layer.gate.shared_logits.uniform_(-0.5, 0.5)
    card = export_task(model, "stsb", tmp_path / "stsb")
    assert card["format"] == "transformers"
    examples = samples["stsb"][:3]
    assert torch.allclose(plain_logits(tmp_path / "stsb", model, examples), task_logits(model, examples), atol=1e-4)
    assert (tmp_path / "stsb" / "alter-task.json").exists()


def test_a_shared_peft_lora_merges_into_a_plain_model(registry, samples, tmp_path):
    config = ModelConfig(backbone="tiny-llama", max_source_length=64, mta=MTAConfig(enabled=False),
                         lora=SharedLoraConfig(r=4))
    model = MTAModel(config, [registry.get("sst2")]).eval()
    with torch.no_grad():
        for param in model.param_groups()["adapters"].values():
            param.normal_(0, 0.2)
    export_task(model, "sst2", tmp_path / "out")
    examples = samples["sst2"][:3]
    assert torch.allclose(plain_logits(tmp_path / "out", model, examples), task_logits(model, examples), atol=1e-4)


def test_bottleneck_experts_travel_as_a_checkpoint_with_its_backbone(registry, samples, tmp_path):
    model = MTAModel(model_config("tiny-llama", kind="bottleneck"),
                     [registry.get("sst2"), registry.get("dialogsum")]).eval()
    randomise_experts(model)
    card = export_task(model, "sst2", tmp_path / "out")
    assert card["format"] == "alter" and "bottleneck experts are not LoRA" in card["note"]
    assert (tmp_path / "out" / "backbone" / "config.json").exists()
    loaded = alter.load(tmp_path / "out")
    examples = samples["sst2"][:3]
    assert model.predict(examples) == loaded.predict(examples)


def test_export_refuses_a_folder_that_is_not_empty(registry, tmp_path):
    model = MTAModel(model_config("tiny-llama"), [registry.get("sst2")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_task(model, "sst2", tmp_path / "out")


def collaborating_lora_model(registry, backbone: str, **mta) -> MTAModel:
    """LoRA experts (and a shared one) with random weights under learned, mixing task gates."""
    model = MTAModel(model_config(backbone, kind="lora", rank=4, shared_expert=True, **mta),
                     [registry.get("sst2"), registry.get("stsb"), registry.get("rte")]).eval()
    randomise_experts(model)
    model.start_collaboration("residual")
    with torch.no_grad():
        for layer in model.mta_layers:
            layer.gate.task_logits.uniform_(-0.5, 0.5)
            layer.gate.shared_logits.uniform_(-0.5, 0.5)
    return model


def peft_logits(folder, model: MTAModel, examples) -> torch.Tensor:
    base = AutoModelForCausalLM.from_pretrained(resolve_backbone(model.config.backbone), dtype="float32")
    adapted = PeftModel.from_pretrained(base, folder).eval()
    batch = model.head.collate(model.encode(examples, with_target=False), model.tokenizer)
    with torch.no_grad():
        return adapted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize(("backbone", "mta"), [
    ("tiny-llama", {"targets": ["self_attn.q_proj", "self_attn.v_proj"]}),  # in attention, every layer
    ("tiny-llama", {"layers": [-1]}),  # the FFN's linears, last layer only: full module paths
    ("tiny-gpt2", {}),  # Conv1D layers (fan_in_fan_out)
])
def test_a_peft_export_reproduces_the_task_in_peft(registry, samples, tmp_path, backbone, mta):
    model = collaborating_lora_model(registry, backbone, **mta)
    card = export_task(model, "rte", tmp_path / "rte", format="peft")
    assert card["format"] == "peft"
    config = json.loads((tmp_path / "rte" / "adapter_config.json").read_text())
    assert {"r", "lora_alpha", "target_modules"} <= set(config) and not config.get("modules_to_save")
    # Every expert of the task (3 tasks + the shared one, all weighted after collaboration).
    assert config["r"] == 4 * 4 and config["lora_alpha"] == config["r"]
    examples = samples["rte"][:3]
    difference = (peft_logits(tmp_path / "rte", model, examples) - task_logits(model, examples)).abs().max()
    assert difference < 1e-4


def test_a_peft_export_leaves_out_experts_the_task_does_not_use(registry, samples, tmp_path):
    model = MTAModel(model_config("tiny-llama", kind="lora", rank=4, shared_expert=True),
                     [registry.get("sst2"), registry.get("rte")]).eval()
    randomise_experts(model)  # stage-1 gates: the task's own expert and the shared one
    export_task(model, "sst2", tmp_path / "sst2", format="peft")
    assert json.loads((tmp_path / "sst2" / "adapter_config.json").read_text())["r"] == 2 * 4
    examples = samples["sst2"][:2]
    assert (peft_logits(tmp_path / "sst2", model, examples) - task_logits(model, examples)).abs().max() < 1e-4


def test_a_shared_peft_lora_exports_as_itself(registry, samples, tmp_path):
    config = ModelConfig(backbone="tiny-llama", max_source_length=64, mta=MTAConfig(enabled=False),
                         lora=SharedLoraConfig(r=4, alpha=8))
    model = MTAModel(config, [registry.get("sst2")]).eval()
    with torch.no_grad():
        for param in model.param_groups()["adapters"].values():
            param.normal_(0, 0.2)
    export_task(model, "sst2", tmp_path / "out", format="peft")
    examples = samples["sst2"][:2]
    assert (peft_logits(tmp_path / "out", model, examples) - task_logits(model, examples)).abs().max() < 1e-4


def test_what_cannot_be_a_peft_adapter_is_refused_with_what_to_use(registry, tmp_path):
    bottleneck = MTAModel(model_config("tiny-llama", kind="bottleneck"), [registry.get("sst2")])
    with pytest.raises(ValueError, match="bottleneck experts are not LoRA; use --format alter"):
        export_task(bottleneck, "sst2", tmp_path / "a", format="peft")
    routed = MTAModel(model_config("tiny-llama", kind="lora", gate="task+input"), [registry.get("sst2")])
    routed.start_collaboration("residual")  # stage 1's fixed gates ignore the input; these do not
    with pytest.raises(ValueError, match="depend on the input"):
        export_task(routed, "sst2", tmp_path / "b", format="peft")
    with pytest.raises(ValueError, match="cannot merge"):
        export_task(bottleneck, "sst2", tmp_path / "c", format="transformers")


def test_the_command_line_exports_a_peft_adapter_and_names_a_bad_format(registry, tmp_path):
    from typer.testing import CliRunner

    from alter.cli import app

    model = collaborating_lora_model(registry, "tiny-llama")
    model.save(tmp_path / "checkpoint")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "checkpoint"), str(tmp_path / "out"), "--task", "rte",
                                 "--format", "peft"])
    assert result.exit_code == 0, result.output
    assert "PEFT LoRA adapter of rank 16" in " ".join(result.output.split())  # rich wraps lines
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    result = runner.invoke(app, ["export", str(tmp_path / "checkpoint"), str(tmp_path / "other"), "--task", "rte",
                                 "--format", "onnx"])
    assert result.exit_code == 2 and "choose one of auto, transformers, peft, alter" in " ".join(result.output.split())
