"""Int8 decoding steps for the pretrained weights: close to float32 there, float32 itself for
prompt passes, scoring and wherever a gradient is wanted; the experts, adapters and heads
untouched; nothing saved."""

import pytest
import torch
from torch import nn

from alter.config import SharedLoraConfig
from alter.models.mta_model import MTAModel
from alter.models.quantized import Int8InferenceLinear, int8_prompts, quantize_linears
from tests.conftest import FAMILIES, examples_for, model_config, randomise_experts, scoring_probe_report, tasks_for


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(64, 48)


def test_int8_for_generation_alone_and_float32_where_gradients_flow():
    plain = _linear()
    root = nn.Sequential(plain)
    assert quantize_linears(root, {id(plain.weight)}, "int8") == 1
    fast = root[0]
    assert fast is plain and isinstance(fast, Int8InferenceLinear)
    step, prompt = torch.randn(3, 1, 64), torch.randn(3, 5, 64)  # (B, T, in)
    expected = nn.functional.linear(step, plain.weight, plain.bias)
    fast.eval()
    with torch.no_grad():
        approximate = fast(step)
        assert torch.equal(fast(prompt), nn.functional.linear(prompt, plain.weight, plain.bias))
        with int8_prompts():  # a generation's prompt pass
            assert not torch.equal(fast(prompt), nn.functional.linear(prompt, plain.weight, plain.bias))
    assert not torch.equal(approximate, expected)  # the int8 kernel ran
    assert (approximate - expected).abs().max() < 0.02 * expected.abs().max()
    assert torch.equal(fast(step), expected)  # gradients enabled: float32
    fast.train()
    with torch.no_grad():
        assert torch.equal(fast(step), expected)  # training mode: float32


def test_a_rows_int8_result_does_not_depend_on_its_batchmates():
    plain = _linear()
    root = nn.Sequential(plain).eval()
    quantize_linears(root, {id(plain.weight)}, "int8")
    row = torch.randn(1, 1, 64)
    quiet, loud = torch.randn(3, 1, 64) * 0.01, torch.randn(3, 1, 64) * 100.0
    with torch.no_grad():
        alone = root(row)
        assert torch.equal(root(torch.cat([row, quiet]))[:1], alone)
        assert torch.equal(root(torch.cat([loud, row]))[3:], alone)


def test_the_int8_copy_follows_the_weights_when_they_change():
    plain = _linear()
    root = nn.Sequential(plain).eval()
    quantize_linears(root, {id(plain.weight)}, "int8")
    x = torch.randn(2, 1, 64)
    with torch.no_grad():
        before = root(x)
        plain.weight.mul_(2.0)  # an optimizer step or a loaded checkpoint changes it in place
        after = root(x)
    assert (after - 2 * before + plain.bias).abs().max() < 0.05 * after.abs().max()


def test_back_to_float32_and_only_the_named_weights():
    frozen, trained = _linear(0), _linear(1)
    root = nn.Sequential(frozen, nn.ReLU(), trained)
    quantize_linears(root, {id(frozen.weight)}, "int8")
    assert isinstance(root[0], Int8InferenceLinear) and type(root[2]) is nn.Linear
    keys = set(root.state_dict())
    assert quantize_linears(root, {id(frozen.weight)}, "none") == 1
    assert type(root[0]) is nn.Linear and set(root.state_dict()) == keys


def test_hooks_on_a_quantized_layer_still_run():
    plain = _linear()
    plain.register_forward_hook(lambda module, args, output: output + 1000.0)  # as a bottleneck expert's
    root = nn.Sequential(plain).eval()
    quantize_linears(root, {id(plain.weight)}, "int8")
    with torch.no_grad():
        assert root(torch.randn(2, 1, 64)).min() > 900.0


@pytest.mark.parametrize("backbone,head", FAMILIES)
@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_an_mta_model_quantizes_its_backbone_alone(registry, samples, backbone, head, kind):
    model = MTAModel(model_config(backbone, head, kind=kind, rank=4), tasks_for(registry, head)).eval()
    randomise_experts(model)
    examples = examples_for(samples, head)
    reference = model.predict(examples, max_new_tokens=4)
    state = {name: value.clone() for name, value in model.trained_state().items()}
    model.set_inference("int8")
    fast = [name for name, module in model.named_modules() if isinstance(module, Int8InferenceLinear)]
    assert fast, "no pretrained linear layer computes in int8"
    groups = model.param_groups()
    quantized_weights = {id(module.weight) for module in model.modules() if isinstance(module, Int8InferenceLinear)}
    for group in ("experts", "gates", "heads", "adapters"):  # ours stay float32
        assert not quantized_weights & {id(param) for param in groups[group].values()}
    predictions = model.predict(examples, max_new_tokens=4)
    for example, prediction, expected in zip(examples, predictions, reference):
        if model.tasks[model.task_id(example.task)].kind != "generation":  # one pass: exactly float32
            assert prediction == expected
    if head == "lm":  # the summaries' decoding steps read int8 copies
        assert any(module._packed is not None for module in model.modules() if isinstance(module, Int8InferenceLinear))
    # Nothing of it is saved: the trained state is the same tensors under the same names.
    after = model.trained_state()
    assert set(after) == set(state) and all(torch.equal(after[name], state[name]) for name in state)
    model.set_inference("none")
    assert model.predict(examples, max_new_tokens=4) == reference


def test_a_training_step_is_float32_whatever_the_setting(registry, samples):
    def losses(quantize: str) -> torch.Tensor:
        torch.manual_seed(0)
        model = MTAModel(model_config("tiny-llama", kind="lora", rank=4), tasks_for(registry, "lm"))
        randomise_experts(model)
        model.set_inference(quantize)
        model.train()
        return model(model.encode(examples_for(samples, "lm")))

    assert torch.equal(losses("int8"), losses("none"))


def test_the_shared_lora_keeps_its_adapters_in_float32(registry):
    config = model_config("tiny-llama", enabled=False).model_copy(update={"lora": SharedLoraConfig(r=4)})
    model = MTAModel(config, tasks_for(registry, "lm")).eval()
    model.set_inference("int8")
    adapters = {id(param) for param in model.param_groups()["adapters"].values()}
    assert adapters
    for module in model.modules():
        if isinstance(module, Int8InferenceLinear):
            assert id(module.weight) not in adapters


@pytest.mark.parametrize("bias", [True, False])
def test_the_compiled_row_scaling_computes_exactly_what_the_python_does(bias):
    from alter.models import quantized

    torch.manual_seed(0)
    layer = nn.Linear(64, 48, bias=bias).eval()
    quantize_linears(nn.Sequential(layer), {id(layer.weight)}, "int8")
    rows = torch.randn(5, 64)
    with torch.no_grad():
        packed = layer._int8_weight()
        arguments = (rows, packed, layer._bounds, layer.bias, quantized.SEVEN_BIT_ACTIVATIONS)
        assert torch.equal(quantized._compiled_scaled_int8_linear(*arguments),
                           quantized.scaled_int8_linear(*arguments))


def test_without_torchscript_the_python_function_runs(monkeypatch):
    from alter.models import quantized

    def unavailable(function):
        raise RuntimeError("TorchScript is not available")

    monkeypatch.setattr(torch.jit, "script", unavailable)
    assert quantized._scripted(quantized.scaled_int8_linear) is quantized.scaled_int8_linear


def test_without_int8_kernels_it_generates_in_float32_with_one_warning(monkeypatch, caplog):
    from alter.models import quantized

    monkeypatch.setattr(quantized, "has_int8_kernels", lambda: False)
    plain = _linear()
    root = nn.Sequential(plain)
    with caplog.at_level("WARNING", logger="alter.models.quantized"):
        assert quantize_linears(root, {id(plain.weight)}, "int8") == 0
    assert type(root[0]) is nn.Linear
    assert len(caplog.records) == 1 and "float32" in caplog.records[0].getMessage()


def test_the_command_lines_choices_are_the_configs():
    from typing import get_args

    from alter import cli
    from alter.config import InferenceConfig, Quantize

    assert [choice.value for choice in cli.Quantize] == list(get_args(Quantize))
    assert cli.Quantize.int8.value == InferenceConfig().quantize  # the commands' default is the config's


def test_an_unknown_setting_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'int4' is not one of int8, none"):
        quantize_linears(nn.Sequential(_linear()), set(), "int4")


def test_the_int8_scoring_probe_reports_each_setting_against_float32(registry, tmp_path):
    """bench/int8_scoring.py, the measurement behind scoring in float32, runs end to end."""
    report = scoring_probe_report(registry, tmp_path, "int8_scoring.py")
    assert report["int8_layers"] > 0 and len(report["settings"]) == 4
    for found in report["settings"].values():
        assert found["sst2"]["examples"] == found["rte"]["examples"] == 3
        assert 0 <= found["sst2"]["mean_change"] <= found["sst2"]["max_change"] <= 1
