"""Checkpoints saved by an earlier layout of the package load and answer as they did then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import alter
from alter.models.quantized import quantize_setting

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints-v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_checkpoint_of_the_previous_layout_loads_and_answers_as_before(registry, name):
    from alter.data.task import data_root

    expected = EXPECTED[name]
    examples = [e for task in expected["tasks"] for e in registry.get(task).read("dev", data_root())[:3]]
    model = alter.load(FIXTURES / name).eval()
    with torch.no_grad():
        logits = model(model.encode(examples))
    assert torch.allclose(logits, load_file(str(FIXTURES / name / "expected_logits.safetensors"))["logits"],
                          atol=1e-6)
    predictions = [[value, probabilities] for value, probabilities in model.predict(examples, max_new_tokens=6)]
    for (value, probabilities), (expected_value, expected_probabilities) in zip(predictions,
                                                                              expected["predictions"]):
        assert value == pytest.approx(expected_value, abs=1e-6) if isinstance(value, float) else \
            value == expected_value
        assert probabilities == pytest.approx(expected_probabilities, abs=1e-6)


@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_checkpoint_of_the_previous_layout_takes_a_new_task_and_answers_as_before(registry, name, quantize):
    from alter.data.task import data_root

    expected = EXPECTED[name]
    examples = [e for task in expected["tasks"] for e in registry.get(task).read("dev", data_root())[:3]]
    model = alter.load(FIXTURES / name, quantize).eval()  # the grown model generates as this one does
    new = next(task for task in ("rte", "mrpc") if task not in expected["tasks"])
    if not model.mta_layers:  # the shared LoRA and the Bi-LSTM have no task modules to add
        with pytest.raises(alter.TaskSurgeryError, match="only a model with MTA experts"):
            alter.with_task_added(model, registry.get(new))
        return
    before = model.predict(examples, max_new_tokens=6)
    grown = alter.with_task_added(model, registry.get(new))
    assert quantize_setting(grown.backbone) == quantize
    assert grown.predict(examples, max_new_tokens=6) == before
