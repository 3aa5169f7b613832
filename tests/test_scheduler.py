"""The continuous scheduler: the answers of static batching, scoring between decoding steps,
a bounded queue, and rows that leave when their client does."""

from __future__ import annotations

import time

import pytest

from alter.models.mta_model import MTAModel
from alter.serve.predictor import Predictor
from alter.serve.scheduler import ContinuousScheduler, QueueFull
from tests.conftest import model_config, randomise_experts

SUMMARY = {"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Hi, how are you?\n#Person2#: Fine, thanks."}}
SCORE = {"task": "sst2", "inputs": {"sentence": "a fine film"}}


@pytest.fixture(scope="module")
def predictor(registry):
    model = MTAModel(model_config("tiny-llama", kind="lora", rank=4),
                     [registry.get(name) for name in ("sst2", "stsb", "dialogsum")])
    randomise_experts(model)
    return Predictor(model, batch_size=8, max_new_tokens=12)


def running(predictor, **options) -> ContinuousScheduler:
    scheduler = ContinuousScheduler(predictor, **options)
    scheduler.start()
    return scheduler


def test_mixed_requests_get_the_answers_of_static_batching(predictor):
    requests = [SUMMARY, SCORE, {"task": "stsb", "inputs": {"sentence1": "A dog runs.", "sentence2": "A dog ran."}},
                {"task": "dialogsum", "inputs": {"dialogue": "#Person1#: Where is the station?"}}]
    scheduler = running(predictor)
    try:
        first = scheduler.submit(requests[:2])
        time.sleep(0.05)  # the second pair joins while the first summary runs
        second = scheduler.submit(requests[2:])
        answers = [future.result(timeout=60) for future in first + second]
    finally:
        scheduler.stop()
    assert_same_answers(answers, predictor.predict(requests))


def assert_same_answers(answers: list[dict], expected: list[dict]) -> None:
    """Texts and labels exactly; scores to float noise (other batches pad differently)."""
    assert len(answers) == len(expected)
    for answer, wanted in zip(answers, expected):
        assert answer["task"] == wanted["task"] and answer["truncated"] == wanted["truncated"]
        if isinstance(wanted["prediction"], float):
            assert answer["prediction"] == pytest.approx(wanted["prediction"], abs=1e-5)
        else:
            assert answer["prediction"] == wanted["prediction"]
        assert answer["scores"] == pytest.approx(wanted["scores"], abs=1e-5)


def test_a_classification_is_answered_while_a_long_generation_runs(predictor):
    slow = Predictor(predictor.model, batch_size=8, max_new_tokens=400)
    scheduler = running(slow)
    try:
        (summary,) = scheduler.submit([SUMMARY])
        while not scheduler.running:  # the summary has been prefilled and is decoding
            time.sleep(0.01)
        (score,) = scheduler.submit([SCORE])
        assert score.result(timeout=60)["prediction"] in {"negative", "positive"}
        assert not summary.done()
        summary.cancel()  # its client left: the row leaves the batch
        deadline = time.monotonic() + 30
        while scheduler.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not scheduler.running and len(scheduler.batch) == 0
    finally:
        scheduler.stop()


def test_a_label_is_held_while_summaries_are_written_for_at_most_label_wait(predictor):
    slow = Predictor(predictor.model, batch_size=8, max_new_tokens=400)
    scheduler = running(slow, label_wait_s=0.2)
    try:
        (summary,) = scheduler.submit([SUMMARY])
        while not scheduler.running:
            time.sleep(0.01)
        submitted = time.monotonic()
        (score,) = scheduler.submit([SCORE])
        answer = score.result(timeout=60)
        assert time.monotonic() - submitted >= 0.2  # held, then scored between two decoding steps
        summary.cancel()
    finally:
        scheduler.stop()
    assert_same_answers([answer], slow.predict([SCORE]))


def test_a_label_held_longer_than_the_summaries_is_scored_when_they_end(predictor):
    scheduler = running(predictor, label_wait_s=60.0)
    try:
        (summary,) = scheduler.submit([SUMMARY])
        while not scheduler.running and not summary.done():
            time.sleep(0.005)
        submitted = time.monotonic()
        (score,) = scheduler.submit([SCORE])
        answer = score.result(timeout=30)
        assert summary.done() and time.monotonic() - submitted < 30  # not the whole wait
    finally:
        scheduler.stop()
    assert_same_answers([answer], predictor.predict([SCORE]))


def test_a_full_queue_refuses_at_once(predictor):
    scheduler = ContinuousScheduler(predictor, max_queue=3)  # not started: nothing is taken
    scheduler.submit([SCORE, SCORE])
    with pytest.raises(QueueFull, match="at most 3"):
        scheduler.submit([SCORE, SCORE])


def test_beam_search_is_answered_statically_between_iterations(predictor):
    beams = Predictor(predictor.model, batch_size=8, max_new_tokens=6, num_beams=2)
    scheduler = running(beams)
    try:
        answers = [future.result(timeout=60) for future in scheduler.submit([SUMMARY, SCORE])]
    finally:
        scheduler.stop()
    assert_same_answers(answers, beams.predict([SUMMARY, SCORE]))


def test_each_request_writes_under_its_own_settings_as_static_batching_does(predictor):
    requests = [{**SUMMARY, "no_repeat_ngram_size": 2}, {**SUMMARY, "temperature": 0.9, "top_p": 0.8, "seed": 4},
                {**SUMMARY, "num_beams": 3, "max_new_tokens": 5}, SCORE, {**SUMMARY, "repetition_penalty": 1.4},
                {**SUMMARY, "temperature": 1.2, "seed": 9, "max_new_tokens": 7}]
    scheduler = running(predictor)
    try:
        first = scheduler.submit(requests[:3])
        time.sleep(0.05)  # the others join while the first ones run
        second = scheduler.submit(requests[3:])
        answers = [future.result(timeout=60) for future in first + second]
    finally:
        scheduler.stop()
    assert_same_answers(answers, predictor.predict(requests))
    assert_same_answers(answers, [predictor.predict([request])[0] for request in requests])  # each alone
    assert len({answer["prediction"] for answer in answers if answer["task"] == "dialogsum"}) > 1
