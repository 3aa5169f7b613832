"""Predictor: mixed-task requests in one call give what each task's requests give alone."""

from __future__ import annotations

import pytest

from alter.models.mta_model import MTAModel
from alter.serve.predictor import Predictor, RequestError
from tests.conftest import model_config, randomise_experts


@pytest.fixture(scope="module")
def predictor(registry):
    tasks = [registry.get(name) for name in ("sst2", "stsb", "dialogsum")]
    model = MTAModel(model_config("tiny-llama"), tasks)
    randomise_experts(model)
    model.start_collaboration("softmax", 0.7)
    return Predictor(model, batch_size=4, max_new_tokens=6, num_beams=2)


def requests_of(samples, name, count=3):
    return [{"task": name, "inputs": dict(example.inputs)} for example in samples[name][:count]]


def test_mixed_requests_give_the_single_task_results_in_request_order(predictor, samples):
    per_task = {name: requests_of(samples, name) for name in ("sst2", "stsb", "dialogsum")}
    mixed = [request for group in zip(*per_task.values()) for request in group]  # interleaved
    together = predictor.predict(mixed)
    alone = {name: predictor.predict(requests) for name, requests in per_task.items()}
    expected = [result for group in zip(*alone.values()) for result in group]
    assert [r["task"] for r in together] == [r["task"] for r in mixed]
    for got, want in zip(together, expected):
        if isinstance(want["prediction"], float):
            assert got["prediction"] == pytest.approx(want["prediction"], abs=1e-5)
        else:
            assert got["prediction"] == want["prediction"]
        assert got["scores"].keys() == want["scores"].keys()
        for key in want["scores"]:
            assert got["scores"][key] == pytest.approx(want["scores"][key], abs=1e-5)
    assert isinstance(together[1]["prediction"], float)  # stsb: a number
    assert set(together[0]["scores"]) == {"negative", "positive"}


def test_a_long_input_is_truncated_and_says_so(predictor):
    long = {"task": "sst2", "inputs": {"sentence": "a very long review " * 200}}
    short = {"task": "sst2", "inputs": {"sentence": "fine"}}
    assert [r["truncated"] for r in predictor.predict([long, short])] == [True, False]


@pytest.mark.parametrize("request_,message", [
    ({"task": "nope", "inputs": {"sentence": "x"}}, "request 1: unknown task 'nope'"),
    ({"task": "sst2", "inputs": {"text": "x"}}, "request 1: task sst2 needs input field(s) sentence"),
    ({"task": "sst2", "inputs": {"sentence": "  "}}, "request 1: input field sentence must be a non-empty string"),
    ({"task": "sst2", "inputs": {"sentence": 3}}, "request 1: input field sentence must be a non-empty string"),
    ({"task": "sst2", "inputs": "x"}, "request 1: 'inputs' must be an object"),
    ("sst2", "request 1: expected an object"),
])
def test_a_bad_request_names_itself_and_the_problem(predictor, request_, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predictor.predict([{"task": "sst2", "inputs": {"sentence": "fine"}}, request_])


def test_tasks_describe_their_inputs_and_labels(predictor):
    tasks = {task["name"]: task for task in predictor.tasks()}
    assert tasks["sst2"] == {"name": "sst2", "kind": "classification", "inputs": ["sentence"],
                             "labels": ["negative", "positive"]}
    assert tasks["dialogsum"]["labels"] == [] and tasks["stsb"]["kind"] == "regression"
