"""`alter export`: LoRA adapters merge into a plain model that computes what the MTA model
computed for that task; other adapters travel as a checkpoint with its backbone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from alter.config import ModelConfig, SharedLoraConfig
from alter.model import MTAModel
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
    model = MTAModel(model_config("tiny-llama"), [registry.get("sst2"), registry.get("dialogsum")]).eval()
    randomise_experts(model)
    card = export_task(model, "sst2", tmp_path / "out")
    assert card["format"] == "alter" and "not linear" in card["note"]
    assert (tmp_path / "out" / "backbone" / "config.json").exists()
    loaded = MTAModel.load(tmp_path / "out")
    examples = samples["sst2"][:3]
    assert model.predict(examples) == loaded.predict(examples)


def test_export_refuses_a_folder_that_is_not_empty(registry, tmp_path):
    model = MTAModel(model_config("tiny-llama"), [registry.get("sst2")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_task(model, "sst2", tmp_path / "out")
