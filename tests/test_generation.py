"""Generation settings: set per task in a config, saved with the model, overridden per
request within the server's limits, and applied to the written tokens only."""

from __future__ import annotations

import pytest
import torch

import alter
from alter.config import Config, ConfigError
from alter.data.generation import GenerationSettings
from alter.data.spec import TaskSpec
from alter.data.task import Task
from alter.models.card import write_model_card
from alter.models.decoding import processors
from alter.models.mta_model import MTAModel
from alter.serve.predictor import Predictor, RequestError
from alter.training.datasets import load_tasks
from tests.conftest import model_config, randomise_experts

SUMMARY = {"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Hi, how are you?\n#Person2#: Fine, thanks."}}


def test_a_field_left_unset_takes_the_next_levels_value():
    task = GenerationSettings(num_beams=4, no_repeat_ngram_size=3)
    merged = GenerationSettings(max_new_tokens=20).over(task.over(GenerationSettings(max_new_tokens=48, num_beams=1)))
    assert (merged.max_new_tokens, merged.num_beams, merged.no_repeat_ngram_size) == (20, 4, 3)
    sampled = GenerationSettings(temperature=0.7).over(task)  # a sample asks for one beam
    assert sampled.num_beams == 1 and sampled.samples and sampled.no_repeat_ngram_size == 3
    with pytest.raises(ValueError, match="sampling .* writes one beam"):
        GenerationSettings(temperature=0.7, num_beams=2)


def test_repetition_controls_count_the_written_tokens_only():
    """A summary may reuse its prompt's words (the dialogue's): the controls do not count them."""
    settings = GenerationSettings(no_repeat_ngram_size=2, repetition_penalty=2.0)
    ids = torch.tensor([[5, 6, 5]])  # (1, 3)
    scores = torch.zeros(1, 10)
    scores[0, 5] = scores[0, 6] = 1.0
    as_prompt = processors(settings, prompt_length=3)(ids, scores.clone())  # nothing written yet
    assert torch.equal(as_prompt, scores)
    as_written = processors(settings, prompt_length=0)(ids, scores.clone())  # 5, 6, 5 written
    assert as_written[0, 6] == float("-inf")  # (5, 6) again would repeat a bigram
    assert as_written[0, 5] == pytest.approx(0.5)  # a written token's logit, divided by the penalty


def test_a_config_sets_a_tasks_settings_and_refuses_them_on_a_classifier(tmp_path):
    config = Config(data={"tasks": [{"name": "dialogsum", "generation": {"no_repeat_ngram_size": 3}}, "sst2"]})
    dialogsum, sst2 = load_tasks(config)
    assert dialogsum.spec.generation == GenerationSettings(no_repeat_ngram_size=3)
    assert sst2.spec.generation is None
    wrong = Config(data={"tasks": [{"name": "sst2", "generation": {"num_beams": 2}}]})
    with pytest.raises(ConfigError, match=r"data.tasks \(sst2\).generation: settings for generation tasks; sst2 is a "
                                          "classification task"):
        load_tasks(wrong)


@pytest.fixture(scope="module")
def model(registry):
    spec = registry.get("dialogsum").spec
    settings = {"max_new_tokens": 3, "no_repeat_ngram_size": 2}
    written_short = Task(TaskSpec(**{**spec.model_dump(), "generation": settings}))
    model = MTAModel(model_config("tiny-llama", kind="lora", rank=4), [registry.get("sst2"), written_short])
    randomise_experts(model)
    return model.eval()


def test_a_tasks_settings_are_saved_with_the_model_and_used(model, tmp_path):
    model.save(tmp_path / "model")
    loaded = alter.load(tmp_path / "model")
    assert loaded.tasks[1].spec.generation == GenerationSettings(max_new_tokens=3, no_repeat_ngram_size=2)
    (text, _), = loaded.predict([SUMMARY], max_new_tokens=40)  # the task's length wins
    rows = loaded.encode([SUMMARY], with_target=False)
    ids = loaded.head.generate_ids(loaded.backbone, rows, loaded.tokenizer,
                                   GenerationSettings(max_new_tokens=3, num_beams=1, no_repeat_ngram_size=2))
    assert ids.shape[1] <= 3 and text == loaded.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    card = write_model_card(tmp_path / "model", loaded).read_text()
    assert "| dialogsum | generation | dialogue | text (max_new_tokens 3, no_repeat_ngram_size 2) |" in card


def test_a_request_overrides_its_tasks_settings_within_the_servers_limits(model):
    predictor = Predictor(model, max_new_tokens=8, max_beams=2)
    (settings,) = predictor.settings([{**SUMMARY, "max_new_tokens": 100, "no_repeat_ngram_size": 0}])
    assert (settings.max_new_tokens, settings.no_repeat_ngram_size) == (8, 0)  # cut to the server's budget
    (task_default,) = predictor.settings([SUMMARY])
    assert (task_default.max_new_tokens, task_default.no_repeat_ngram_size) == (3, 2)
    (sampled,) = predictor.settings([{**SUMMARY, "temperature": 0.5}])
    assert sampled.seed is not None  # a sample's own seed: the same whichever path writes it
    for request, message in [({**SUMMARY, "num_beams": 3}, "num_beams 3 is over the server's 2"),
                             ({**SUMMARY, "num_beams": 2, "temperature": 0.5},
                              r"^request 0: sampling \(temperature > 0\) writes one beam"),
                             ({"task": "sst2", "inputs": {"sentence": "fine"}, "num_beams": 2},
                              "num_beams: task sst2 does not generate")]:
        with pytest.raises(RequestError, match=message):
            predictor.settings([request])


def test_a_declared_generation_task_writes_no_3_gram_twice_unless_it_says_so(tmp_path):
    from alter.data.registry import builtin_registry

    assert builtin_registry().get("dialogsum").spec.generation.no_repeat_ngram_size == 3
    assert builtin_registry().get("sst2").spec.generation is None
    fields = {"name": "mine", "kind": "generation", "inputs": {"text": "text"}, "target": "summary",
              "template": "{text}\nSummary:"}
    off = TaskSpec(**fields, generation={"no_repeat_ngram_size": 0, "num_beams": 2})
    registry = builtin_registry([off])
    assert registry.get("mine").spec.generation == GenerationSettings(no_repeat_ngram_size=0, num_beams=2)
    (tmp_path / "mail.jsonl").write_text('{"text": "Meeting moved to 3pm.", "summary": "Meeting time"}\n')
    from_file = Task.from_file(tmp_path / "mail.jsonl", name="mail", kind="generation", target="summary")
    assert from_file.spec.generation.no_repeat_ngram_size == 3
    # A saved spec is taken as it was saved: a model's answers do not change when it is loaded.
    assert TaskSpec(**fields).generation is None
