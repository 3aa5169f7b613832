"""The Python API at the package's top level: docs/python.md's example, `from_backbone`,
`save_pretrained` / `from_pretrained`, tasks from files, typed reports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import alter
from alter.backbones import BackboneError, resolve_backbone
from alter.data.readers import DataError
from tests.conftest import randomise_experts

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python.md"
REQUESTS = [{"task": "sst2", "inputs": {"sentence": "a fine, moving film"}},
            {"task": "stsb", "inputs": {"sentence1": "a man plays", "sentence2": "a man is playing"}},
            {"task": "sst2", "inputs": {"sentence": "dull and far too long"}}]


def documented_example() -> str:
    """The first Python block of docs/python.md, on the tiny Llama backbone."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    assert '"smollm2-135m"' in code
    return code.replace('"smollm2-135m"', '"tiny-llama"')


def test_the_documented_example_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(documented_example(), str(DOCS), "exec"), scope)  # noqa: S102 - our own docs
    result, model = scope["result"], scope["model"]
    assert isinstance(result.report, alter.Report) and math.isfinite(result.report.macro)
    assert set(result.report.metrics) == {"sst2", "urgency"}
    assert result.report.stages["stage1"].steps == 60 and result.report.stages["stage2"].steps == 6
    card = (tmp_path / "out" / "tickets" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "alter"
    scored = {r["dataset"]["name"]: r["metrics"][0] for r in front["model-index"][0]["results"]}
    assert set(scored) == {"sst2", "urgency"} and scored["sst2"]["type"] == "accuracy"
    assert scored["sst2"]["value"] == round(result.report.score("sst2"), 1)
    assert "![gate weights](gates.png)" in card and (tmp_path / "out" / "tickets" / "gates.png").exists()
    (sst2, _), (urgency, scores) = model.predict([REQUESTS[0], {"task": "urgency", "inputs": {"text": "help"}}])
    assert sst2 in {"positive", "negative"} and urgency in {"routine", "urgent"}
    assert set(scores) == {"routine", "urgent"}
    assert (tmp_path / "runs" / "python-example" / "model" / "README.md").exists()  # every run's model has a card


def _scores(model) -> list:
    return [scores for _, scores in model.predict(REQUESTS)]


def test_from_backbone_on_a_model_object_equals_the_by_name_path():
    path = resolve_backbone("tiny-llama")
    torch.manual_seed(0)
    by_name = alter.MTAModel.from_backbone("tiny-llama", tasks=["sst2", "stsb"], mta={"kind": "lora", "rank": 2})
    torch.manual_seed(0)
    by_object = alter.MTAModel.from_backbone(AutoModelForCausalLM.from_pretrained(path),
                                             AutoTokenizer.from_pretrained(path), tasks=["sst2", "stsb"],
                                             mta=alter.MTAConfig(kind="lora", rank=2))
    for model in (by_name, by_object):
        randomise_experts(model)
    assert by_object.config.backbone == path  # a local folder is kept by its absolute path
    assert _scores(by_name) == _scores(by_object)


def test_save_pretrained_and_from_pretrained_give_identical_outputs(tmp_path):
    model = alter.MTAModel.from_backbone("tiny-llama", tasks=["sst2", "stsb"], mta={"kind": "bottleneck", "rank": 4})
    randomise_experts(model)
    model.save_pretrained(tmp_path / "saved")
    loaded = alter.MTAModel.from_pretrained(tmp_path / "saved")
    assert _scores(loaded) == _scores(model)
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "library_name: alter" in card and "| sst2 | classification | sentence |" in card
    assert "model-index" not in card  # no scores without a training run


def test_a_backbone_built_in_memory_travels_in_the_folder(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("tiny-llama"))
    torch.manual_seed(0)
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    model = alter.MTAModel.from_backbone(backbone, tokenizer, tasks=["sst2", "stsb"], mta={"kind": "lora", "rank": 2})
    randomise_experts(model)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "backbone" / "config.json").exists()
    assert _scores(alter.MTAModel.from_pretrained(tmp_path / "saved")) == _scores(model)


def test_a_backbone_of_the_wrong_class_for_its_head_is_refused_with_advice():
    with pytest.raises(BackboneError, match="AutoModelForCausalLM"):
        path = resolve_backbone("tiny-llama")
        alter.MTAModel.from_backbone(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                     tasks=["sst2"])
    with pytest.raises(BackboneError, match="load it with AutoModel"):
        alter.MTAModel.from_backbone(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                     tasks=["sst2"], head="classifier")
    with pytest.raises(ValueError, match="tokenizer"):
        alter.MTAModel.from_backbone(AutoModel.from_pretrained(resolve_backbone("tiny-llama")), tasks=["sst2"])


def test_predict_names_a_missing_input_field():
    model = alter.MTAModel.from_backbone("tiny-llama", tasks=["stsb"])
    with pytest.raises(ValueError, match="sentence2"):
        model.predict([{"task": "stsb", "inputs": {"sentence1": "only one"}}])
    with pytest.raises(ValueError, match="an example is"):
        model.predict(["not a request"])


def test_task_from_file_reads_the_labels_and_refuses_what_is_not_a_label(tmp_path):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": ["b", "a"][i % 2]}) + "\n"
                                              for i in range(6)))
    task = alter.Task.from_file(tmp_path / "t.jsonl", name="mine")
    assert task.spec.labels == ["a", "b"] and task.spec.template == "text: {text}\nAnswer:"
    assert task.read("train", tmp_path)[0].target == "b"
    (tmp_path / "u.csv").write_text("text,label\n" + "".join(f"x,{i}\n" for i in range(60)))
    with pytest.raises(DataError, match="too many"):
        alter.Task.from_file(tmp_path / "u.csv", name="mine")
    with pytest.raises(DataError, match="no column 'gold'"):
        alter.Task.from_file(tmp_path / "t.jsonl", name="mine", target="gold")
    with pytest.raises(DataError, match="dev file not found"):
        alter.Task.from_file(tmp_path / "t.jsonl", name="mine", dev=tmp_path / "missing.csv")
    assert alter.Task.from_file(tmp_path / "t.jsonl", name="score", kind="regression").spec.labels is None


def test_a_task_declared_in_python_takes_a_path_for_a_split(tmp_path):
    task = alter.Task(name="mine", kind="generation", inputs={"text": "body"}, target="summary",
                      template="{text}\nSummary:", splits={"train": str(tmp_path / "a.jsonl")})
    assert task.spec.splits["train"].path == str(tmp_path / "a.jsonl")
    with pytest.raises(TypeError):
        alter.Task(task.spec, name="other")


def test_stage_takes_its_kind_first():
    assert alter.Stage("stage2", steps=6).kind == "stage2"
    assert alter.Stage(kind="joint").label == "joint"


def test_loading_a_run_folder_points_at_its_model(tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "alter.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"training run's folder; its model is .*run/model"):
        alter.MTAModel.from_pretrained(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        alter.MTAModel.from_pretrained(tmp_path / "nowhere")


def test_a_user_task_may_not_reuse_a_builtin_name():
    task = alter.Task(name="sst2", kind="classification", inputs={"sentence": "sentence"}, target="label",
                      template="{sentence}", labels=["a", "b"])
    model = alter.MTAModel.from_backbone("tiny-llama", tasks=[task])
    with pytest.raises(ValueError, match="built-in task has this name"):
        alter.train(model, [alter.Stage("stage1", steps=1)], "unused")
