"""The comparison systems on tiny random models: a shared PEFT LoRA, the Bi-LSTM, lead."""

from __future__ import annotations

import pytest
import torch

import alter
from alter.config import ModelConfig, SharedLoraConfig, StageConfig
from alter.evaluate.trivial import lead
from alter.models.bilstm import BiLSTMConfig, BiLSTMModel
from alter.models.contract import Capabilities, ServableModel, TrainableModel
from alter.models.mta_model import MTAModel
from alter.mta import MTAConfig
from alter.serve.predictor import Predictor
from alter.training.stages import prepare_stage
from tests.conftest import model_config


def lora_model(registry, names, targets=("q_proj", "v_proj")) -> MTAModel:
    config = ModelConfig(backbone="tiny-llama", max_source_length=64, max_target_length=12,
                         mta=MTAConfig(enabled=False), lora=SharedLoraConfig(r=4, targets=list(targets)))
    return MTAModel(config, [registry.get(name) for name in names])


def test_a_fresh_shared_lora_gives_the_backbone_outputs(registry, samples):
    names = ["sst2", "dialogsum"]
    examples = [e for name in names for e in samples[name][:2]]
    plain = MTAModel(model_config("tiny-llama", enabled=False), [registry.get(name) for name in names]).eval()
    adapted = lora_model(registry, names).eval()
    assert adapted.param_groups()["adapters"], "the PEFT adapter forms its own parameter group"
    with torch.no_grad():
        assert torch.allclose(plain(plain.encode(examples)), adapted(adapted.encode(examples)))


def test_the_shared_lora_trains_saves_and_loads(registry, samples, tmp_path):
    names = ["sst2", "stsb"]
    model = lora_model(registry, names)
    trainable = prepare_stage(model, StageConfig(kind="joint"))
    assert set(trainable) == set(model.param_groups()["adapters"])  # the LM head has no weights of its own
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    rows = model.encode([e for name in names for e in samples[name][:2]])
    for _ in range(3):
        model(rows).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save(tmp_path / "model")
    loaded = alter.load(tmp_path / "model")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(rows), loaded(loaded.encode([e for n in names for e in samples[n][:2]])))


def test_an_absent_lora_target_names_the_modules_there_are(registry):
    with pytest.raises(ValueError, match="model.lora.targets: no module named c_attn"):
        lora_model(registry, ["sst2"], targets=["c_attn"])


def test_a_lora_target_may_name_the_end_of_a_module_path(registry):
    """As in PEFT: `mlp.up_proj` names each block's FFN up-projection, `1.mlp.up_proj` only the second block's."""
    model = lora_model(registry, ["sst2"], targets=["mlp.up_proj", "1.mlp.down_proj"])
    wrapped = sorted({name.split(".lora_")[0] for name in model.param_groups()["adapters"]})
    assert [name.split("layers.")[-1] for name in wrapped] == ["0.mlp.up_proj", "1.mlp.down_proj", "1.mlp.up_proj"]
    with pytest.raises(ValueError, match="no module named attn.up_proj"):
        lora_model(registry, ["sst2"], targets=["attn.up_proj"])


def test_the_bilstm_learns_each_kind_of_task_and_predicts(registry, samples, tmp_path):
    names = ["sst2", "stsb", "dialogsum"]
    model = BiLSTMModel(model_config("tiny-llama"), [registry.get(name) for name in names],
                        BiLSTMConfig(embed_dim=16, hidden=16, dropout=0.0))
    trainable = prepare_stage(model, StageConfig(kind="joint", train_backbone=True))
    assert len(trainable) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    examples = [e for name in names for e in samples[name][:2]]
    rows = model.encode(examples)
    first = model(rows).mean().item()
    for _ in range(40):
        loss = model(rows).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5 * first
    predictions = model.predict(examples, batch_size=4, max_new_tokens=6)
    assert [type(value) for value, _ in predictions] == [str, str, float, float, str, str]
    assert set(predictions[0][1]) == {"negative", "positive"}
    model.save(tmp_path / "bilstm")
    loaded = alter.load(tmp_path / "bilstm")  # the folder names its architecture
    assert isinstance(loaded, BiLSTMModel) and isinstance(loaded, TrainableModel)
    assert loaded.predict(examples, batch_size=4, max_new_tokens=6) == predictions
    with pytest.raises(ValueError, match="holds a bilstm model, not an MTAModel: load it with alter.load"):
        MTAModel.from_pretrained(tmp_path / "bilstm")


def test_every_system_implements_the_trainable_contract(registry):
    tasks = [registry.get("sst2")]
    mta = MTAModel(model_config("tiny-llama"), tasks)
    plain = MTAModel(model_config("tiny-llama", enabled=False), tasks)
    bilstm = BiLSTMModel(model_config("tiny-llama"), tasks, BiLSTMConfig(embed_dim=8, hidden=8))
    assert all(isinstance(model, TrainableModel) for model in (mta, plain, bilstm))
    assert isinstance(mta, ServableModel) and mta.capabilities.serving and mta.capabilities.gates
    assert not plain.capabilities.gates and plain.expert_plan is None  # declared, not probed
    assert bilstm.capabilities == Capabilities() and bilstm.expert_plan is None and bilstm.label_offsets == {}
    with pytest.raises(ValueError, match="a BiLSTMModel is not served"):
        Predictor(bilstm)
    with pytest.raises(ValueError, match="no gates to prune"):
        bilstm.prune_gates(1)


def test_lead_takes_the_first_sentences_and_turns():
    assert lead("One. Two! Three?", 2) == "One. Two!"
    assert lead("#Person1#: Hi there\n#Person2#: Hello. How are you?\n#Person1#: Fine", 2) == \
        "#Person1#: Hi there #Person2#: Hello."
    assert lead("short", 3) == "short"
